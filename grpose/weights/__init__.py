"""Adapter weight files. One concern per module:

- `loader`: the one way a file becomes an adapter (`load_adapter`), and writing adapter files;
- `init`: initial adapter weights from the SD1.5 UNet (prepare_weights.py);
- `key_report`: readable key reports for the weight tools;
- `release`: converting the authors' released checkpoint;
- `baselines`: converting the released T2I-Adapter and Uni-ControlNet checkpoints.
"""

from .baselines import convert_baseline_checkpoint, convert_baseline_state_dict
from .init import init_adapter_from_unet
from .key_report import format_key_groups, format_key_report, module_group
from .loader import (ADAPTER_PREFIX, adapter_with_weights, build_adapter_from_config, check_state_dict,
                     export_adapter, load_adapter, model_config, save_adapter_weights)
from .release import convert_release_checkpoint, convert_release_state_dict, format_dropped, map_release_keys

__all__ = [
    "ADAPTER_PREFIX", "adapter_with_weights", "build_adapter_from_config", "check_state_dict",
    "convert_baseline_checkpoint", "convert_baseline_state_dict",
    "convert_release_checkpoint", "convert_release_state_dict", "export_adapter", "format_dropped",
    "format_key_groups", "format_key_report", "init_adapter_from_unet", "load_adapter", "map_release_keys",
    "model_config", "module_group", "save_adapter_weights",
]
