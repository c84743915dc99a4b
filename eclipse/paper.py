"""Numbers the ECLIPSE paper reports (CIFAR-10, ResNet-18, test accuracy %), for side-by-side tables.
Source: the paper's Tables 1 and 3-7 as restated in shared/docs/ECLIPSE.md."""
from __future__ import annotations

import pandas as pd

ATTACKS = ["EM", "TAP", "REM", "SEP", "EFP", "URP", "LSP", "AR"]

# Table 4: ablation of modules A (diffusion), B (grayscale), C (noise)
TABLE4_ABLATION = pd.DataFrame(
    [[82.80, 86.13, 82.72, 82.85, 77.20, 86.98, 84.58, 87.32, 83.82],
     [27.45, 86.63, 35.74, 44.97, 75.90, 86.86, 39.93, 83.98, 60.18],
     [78.69, 30.95, 67.05, 7.53, 86.14, 58.70, 68.19, 37.63, 54.36],
     [20.43, 84.90, 28.83, 11.93, 79.06, 89.54, 27.11, 33.14, 46.87],
     [73.22, 86.31, 67.48, 41.30, 77.58, 85.59, 81.58, 84.22, 74.66],
     [61.30, 86.94, 77.33, 84.07, 76.72, 87.52, 68.70, 87.59, 78.77],
     [78.82, 83.32, 75.51, 14.66, 81.62, 88.87, 80.08, 60.96, 70.48]],
    index=["A+B+C", "A", "B", "C", "A+B", "A+C", "B+C"], columns=ATTACKS + ["AVG"])

# Table 3: clean accuracy (no poison), ResNet-18
TABLE3_CLEAN = pd.Series({"none": 94.95, "AT": 89.57, "iss-j": 85.23, "eclipse": 90.43})

# Tables 5-7: ECLIPSE average accuracy over the eight poisons
TABLE5_REPLICAS = pd.Series({0: 82.70, 2: 83.28, 4: 83.82, 6: 83.60}, name="M")
TABLE6_SPARSE_FRACTION = pd.Series({0.02: 81.86, 0.04: 83.82, 0.06: 83.20, 0.08: 80.75}, name="B/N")
TABLE7_T_STAR = pd.Series({50: 79.77, 100: 83.82, 150: 81.63}, name="t*")

# Table 1 averages of other defenses (over the poisons)
TABLE1_AVERAGES = pd.Series({"none": 27.0, "iss-j": 80.0, "AT": 76.0, "eclipse": 83.82})
