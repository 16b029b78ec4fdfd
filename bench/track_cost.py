"""Tracking cost per frame (``--track``) with 20 moving instances, masks included; no model.

    python bench/track_cost.py [N_INSTANCES]
"""

import sys

from edgeseg.runtime.track import bench_tracker

if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    for masks in (True, False):
        r = bench_tracker(n, frames=600, masks=masks)
        print(f"{r['instances']} instances, {'with' if masks else 'without'} masks: "
              f"median {r['median_ms']:.3f} ms (CPU {r['cpu_median_ms']:.3f} ms), p90 {r['p90_ms']:.3f} ms per frame "
              f"over {r['frames']} frames")
