"""Put several evaluated runs side by side in one table shaped like GRPose paper Table 1.

    python scripts/compare_runs.py outputs/grpose outputs/controlnet [--out compare.md] [--allow-mixed]

Best values are bold and second best underlined (PCE, FID and KID: lower is better); ± is each run's 95%
interval. Runs scored under different protocols or pose evaluators are refused unless --allow-mixed.
"""

import sys

from grpose.eval.compare import CompareError, main

if __name__ == "__main__":
    try:
        print(main())
    except CompareError as err:
        sys.exit(f"error: {err}")
