"""How the tracking cost per frame grows with the number of objects, with and without masks; no
model. ``edgeseg bench BUNDLE --track`` gives the figure at 20 objects with masks beside the
bundle's own timings; this sweeps the count.

    python bench/track_cost.py [N_INSTANCES ...]      # default: 5 20 50 100
"""

import os
import sys

from edgeseg.runtime.track import bench_tracker

if __name__ == "__main__":
    counts = [int(a) for a in sys.argv[1:]] or [5, 20, 50, 100]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for n in counts:
        for masks in (True, False):
            r = bench_tracker(n, frames=600, masks=masks)
            print(f"{r['instances']:4d} instances, {'with' if masks else 'without'} masks: "
                  f"median {r['median_ms']:.3f} ms (CPU {r['cpu_median_ms']:.3f} ms), p90 {r['p90_ms']:.3f} ms "
                  f"per frame over {r['frames']} frames")
