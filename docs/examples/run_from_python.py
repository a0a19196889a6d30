"""Run lrag-framework from Python: a dict config, overrides, and the result object.

    python docs/examples/run_from_python.py
"""
import lrag_framework

config = {
    "name": "python-example",
    "backbone": {"name": "tiny", "params": {}},  # the shipped world model
    "retrieval": {"k": 3, "recency": 5, "placement": "fill"},
    "generation": {"num_frames": 60, "seed": 0},
    "conditionings": [{"world": 42, "path": "revisit"}],
    "prefix": {"source": "reference", "frames": 12},
    "compare": True,
}
result = lrag_framework.run(config, overrides=["output.fps=12"])
print(result.run_dir)
print("retrieval latents:", tuple(result.latents["retrieval"].shape))  # [streams, frames, C, H, W]
for mode, summary in result.summary["modes"].items():
    print(mode, f"PSNR {summary['mean_psnr']:.2f} dB",
          f"{summary['frames_per_second']:.1f} frames/s")
