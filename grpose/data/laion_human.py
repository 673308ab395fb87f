"""LAION-Human in the HumanSD layout: ids `<shard>_<key>`, `images/<shard>/<key>.jpg`, `pose/<shard>/<key>.npz`.

Same files and sample pipeline as Human-Art; only the scenario (one: `laion_human`) and the download hint differ.
"""

from __future__ import annotations

from grpose.data.humanart import HumanSDPoseDataset

LAION_HUMAN_SCENARIO = "laion_human"

LAION_HUMAN_HINT = (
    "LAION-Human poses and mappings are distributed by the HumanSD authors on request "
    "(https://github.com/IDEA-Research/HumanSD); the images must be downloaded from their LAION URLs. Make the "
    "train/test mappings with scripts/make_laion_split.py. See docs/data.md."
)


class LaionHumanDataset(HumanSDPoseDataset):
    """LAION-Human samples of the batch contract; `scenario` is always `laion_human`."""

    dataset_name = "LAION-Human"
    download_hint = LAION_HUMAN_HINT

    def scenario_of(self, img_path: str) -> str:
        return LAION_HUMAN_SCENARIO
