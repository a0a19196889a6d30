"""``evaluate_runs``: every configured metric on each run directory, ``eval.json`` and plots.

A metric that cannot run (weights not on disk, no ground truth, no latents, a library that does
not import) is *skipped* with one line saying why; the rest run. Results per mode hold a
headline ``value`` (the mean over streams) and the per-stream details.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ..devices import resolve_device
from ..files import write_json
from .config import TORCHVISION_METRICS, EvalConfig
from .drift import first_failure, gap_similarity, start_similarity, truth_psnr
from .features import FeatureSource, video_features
from .run_reader import RunData, read_run
from .vbench import aesthetic, clip_to_clip, long_consistency
from .weights import MissingWeights, aesthetic_head_file, model_folder

SCHEMA_VERSION = 1
EXTRACTOR = {"subject_consistency": "dino", "subject_consistency_clip2clip": "dinov2",
             "background_consistency": "clip_b32", "background_consistency_clip2clip": "clip_b32",
             "aesthetic_quality": "clip_l14"}
VIDEO_MEASURES = ("subject_consistency", "background_consistency", "aesthetic_quality")


class Skip(Exception):
    """A metric cannot run here; the message says why (and what to put where)."""


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None


def _torchvision_reason(metric: str) -> str:
    what = {"imaging_quality": "MUSIQ through pyiqa", "dynamic_degree": "RAFT optical flow"}
    try:
        import torchvision  # noqa: F401
    except Exception as err:  # a broken build raises RuntimeError, not ImportError
        first = (str(err).splitlines() or [type(err).__name__])[0]
        return f"needs {what[metric]}, which needs torchvision; torchvision does not import " \
               f"here ({first})"
    return f"needs {what[metric]}: torchvision imports, but this version has no tested " \
           f"{what[metric]} path"


class RunEvaluation:
    """The metrics of one run directory (see ``evaluate_run``)."""

    def __init__(self, run: RunData, cfg: EvalConfig):
        self.run, self.cfg = run, cfg
        self.device = resolve_device(cfg.device)
        self.wanted = set(cfg.metrics)
        self.skipped: dict[str, str] = {}
        self.modes: dict[str, dict] = {m: {} for m in run.modes}
        self.series: dict[str, dict[str, list]] = {m: {} for m in run.modes}  # first failure
        self.frames_per_latent: int | None = None
        if "first_failure" in self.wanted:  # the measures its rules read
            self.wanted |= {r.measure for r in cfg.first_failure}

    def skip(self, metric: str, reason: str) -> None:
        self.skipped.setdefault(metric, reason)

    # -- VBench: features of the mp4s ---------------------------------------------------------
    def _sources(self) -> dict[str, FeatureSource]:
        sources, reasons = {}, {}
        for metric, key in EXTRACTOR.items():
            if metric not in self.wanted:
                continue
            if key not in sources and key not in reasons:
                try:
                    import transformers  # noqa: F401

                    sources[key] = FeatureSource(key, model_folder(
                        key, getattr(self.cfg.weights, key)), self.device)
                except ImportError:
                    reasons[key] = "needs transformers: pip install 'lrag-framework[eval]'"
                except MissingWeights as err:
                    reasons[key] = str(err)
            if key in reasons:
                self.skip(metric, reasons[key])
        return sources

    def vbench(self) -> None:
        sources = self._sources()
        head = None
        if "aesthetic_quality" in self.wanted and "clip_l14" in sources:
            try:
                from .extractors import load_aesthetic_head

                head = load_aesthetic_head(aesthetic_head_file(self.cfg.weights.aesthetic_head))
            except MissingWeights as err:
                self.skip("aesthetic_quality", str(err))
                if not any(EXTRACTOR[m] == "clip_l14" for m in self.wanted - {"aesthetic_quality"}):
                    sources.pop("clip_l14")
        if not sources:
            return
        cache = self.run.path / "eval" / "features" if self.cfg.cache else None
        fps, secs = self.run.fps, self.cfg.clip_seconds
        for mode, data in self.run.modes.items():
            if any(v is None for v in data.videos):
                for metric in EXTRACTOR:
                    self.skip(metric, f"{data.directory}: no stream mp4s (output.video: false)")
                continue
            feats = [video_features(v, list(sources.values()), cache, self.cfg.batch_size)
                     for v in data.videos]
            rows: dict[str, list[dict]] = {}
            for metric, key in EXTRACTOR.items():
                if metric not in self.wanted or key not in sources or (
                        metric == "aesthetic_quality" and head is None):
                    continue
                for f in feats:
                    x = f[key]
                    if metric == "aesthetic_quality":
                        r = aesthetic(x, head, fps, secs)
                    elif metric.endswith("clip2clip"):
                        r = clip_to_clip(x, fps, secs)
                    else:
                        r = long_consistency(x, fps, secs)
                    rows.setdefault(metric, []).append(r)
            for metric, per_stream in rows.items():
                if metric in VIDEO_MEASURES:
                    self.series[mode][metric] = [r.pop("per_frame") for r in per_stream]
                if metric in self.cfg.metrics:
                    self.modes[mode][metric] = {"value": _mean(r["value"] for r in per_stream),
                                                "streams": per_stream}
            if self.frames_per_latent is None and data.latents is not None:
                n, t = next(iter(feats[0].values())).shape[0], data.latents.shape[1]
                self.frames_per_latent = 1 if n == t or t < 2 else round((n - 1) / (t - 1))

    # -- weight-free ----------------------------------------------------------------------------
    def gaps(self) -> None:
        first = self.run.first_generated
        for mode, data in self.run.modes.items():
            if data.latents is None:
                self.skip("gap_similarity", f"{data.directory}: no latents.safetensors "
                          f"(output.save_latents: false)")
                self.skip("start_similarity", "no latents.safetensors")
                continue
            per_stream = [gap_similarity(x, self.cfg.gaps, first) for x in data.latents]
            curve = {g: _mean(s["curve"][g] for s in per_stream) for g in self.cfg.gaps}
            if "gap_similarity" in self.cfg.metrics:
                self.modes[mode]["gap_similarity"] = {
                    "value": curve, "unit": "cosine of flattened latent frames",
                    "streams": per_stream}
            self.series[mode]["start_similarity"] = [start_similarity(x, first)
                                                     for x in data.latents]

    def _references(self):
        policy = self.cfg.references
        if policy == "never":
            raise Skip("references: never")
        if policy == "auto" and not self.run.had_reference:
            raise Skip("the run measured no ground truth (no PSNR in summary.json); "
                       "references: always builds the backbone to ask it")
        from ..plugins import PluginError, load_plugins

        bb = self.run.config.get("backbone") or {}
        try:
            registry = load_plugins(disabled=tuple(self.run.config.get("disable_plugins") or ()))
            backbone = registry.build("backbone", bb.get("name"), bb.get("params") or {})
            backbone = backbone.to(self.device, torch.float32)
        except (PluginError, ValueError, FileNotFoundError) as err:
            raise Skip(f"backbone {bb.get('name')!r} could not be built: {err}") from None
        return backbone

    def truth(self) -> None:
        try:
            backbone = self._references()
        except Skip as err:
            self.skip("psnr", str(err))
            return
        self.frames_per_latent = backbone.spec.frames_per_latent
        from ..generation.plan import Geometry

        recorded = {m.name: m.summary["geometry"] for m in self.run.modes.values()
                    if "geometry" in m.summary}  # the retrieval geometry scores both modes
        geo = recorded.get("retrieval") or next(iter(recorded.values()), None)
        if geo is None:
            self.skip("psnr", "summary.json records no geometry")
            return
        ret = self.run.config.get("retrieval") or {}
        geo = Geometry(**{**geo, "k": int(ret.get("k", geo["k"])) if ret.get("enabled", True)
                          else 0, "retrieved_position": ret.get("retrieved_position", "zero")})
        conds = self.run.config.get("conditionings") or [None]
        for mode, data in self.run.modes.items():
            if data.latents is None:
                self.skip("psnr", f"{data.directory}: no latents.safetensors")
                return
            t = data.latents.shape[1]
            refs = [backbone.reference(conds[s.get("conditioning", 0)], t) for s in data.streams]
            if any(r is None for r in refs):
                self.skip("psnr", f"backbone {self.run.config['backbone']['name']!r} has no "
                          f"ground truth for these conditionings")
                return
            with torch.no_grad():
                pixels = [backbone.decode(x[None].to(self.device)).float().cpu()[0]
                          for x in data.latents]
            result = truth_psnr(pixels, refs, geo, self.run.first_generated, data.log)
            self.series[mode]["psnr"] = [torch.tensor(s["per_frame"]) for s in result["streams"]]
            if "psnr" in self.cfg.metrics:
                self.modes[mode]["psnr"] = result

    def _count_frames_per_latent(self) -> int | None:
        """Video frames per latent frame from an mp4's frame count (n = 1 + r (T - 1))."""
        import imageio_ffmpeg

        for data in self.run.modes.values():
            if data.latents is not None and data.videos and data.videos[0] is not None:
                n, t = imageio_ffmpeg.count_frames_and_secs(str(data.videos[0]))[0], \
                    data.latents.shape[1]
                return 1 if n == t or t < 2 else round((n - 1) / (t - 1))
        return None

    def _video_index(self, latent: int) -> int | None:
        """The first video frame of a latent frame (a causal video VAE: 1 + r (t - 1))."""
        if self.frames_per_latent is None:
            self.frames_per_latent = self._count_frames_per_latent()
        r = self.frames_per_latent
        return None if r is None else (0 if latent == 0 else 1 + (latent - 1) * r)

    def _seconds(self, index: int | None, measure: str) -> float | None:
        if index is not None and measure not in VIDEO_MEASURES:
            index = self._video_index(index)
        return None if index is None else index / self.run.fps

    def failures(self) -> None:
        first = self.run.first_generated
        ran = False
        for rule in self.cfg.first_failure:
            label = f"{rule.measure}<{rule.threshold:g}"
            name = f"first_failure[{label}]"
            for mode in self.run.modes:
                series = self.series[mode].get(rule.measure)
                if series is None:
                    self.skip(name, self.skipped.get(rule.measure, f"{rule.measure} did not run"))
                    break
                start = first if rule.measure not in VIDEO_MEASURES else \
                    (self._video_index(first) or 0)  # unknown frames per latent: from frame 0
                rows = []
                for x in series:
                    i = first_failure(x, start, rule.threshold, rule.patience)
                    end = self._seconds(len(x) - 1, rule.measure)
                    rows.append({"frame": i, "seconds": self._seconds(i, rule.measure),
                                 "censored_at": end})
                value = _mean(r["seconds"] if r["frame"] is not None else r["censored_at"]
                              for r in rows)
                entry = self.modes[mode].setdefault("first_failure", {})
                entry[label] = {"measure": rule.measure, "threshold": rule.threshold, "patience": rule.patience,
                                       "value": value,
                                       "failed": sum(r["frame"] is not None for r in rows),
                                       "streams": rows}
                ran = True
        if not ran:
            self.skipped["first_failure"] = "no measure of its rules ran"

    def evaluate(self) -> dict:
        self.vbench()
        for metric in TORCHVISION_METRICS:
            if metric in self.wanted:
                self.skip(metric, _torchvision_reason(metric))
        if self.wanted & {"gap_similarity", "start_similarity"}:
            self.gaps()
        if "psnr" in self.wanted:
            self.truth()
        if "first_failure" in self.wanted:
            self.failures()
        asked = set(self.cfg.metrics)
        skipped = {m: r for m, r in self.skipped.items()
                   if m in asked or (m.startswith("first_failure") and "first_failure" in asked)}
        ran = sorted({k for mode in self.modes.values() for k in mode})
        return {"schema_version": SCHEMA_VERSION, "run_dir": str(self.run.path),
                "run": self.run.name, "backbone": (self.run.config.get("backbone") or {})
                .get("name"), "first_generated": self.run.first_generated,
                "fps": self.run.fps, "config": self.cfg.model_dump(mode="json"),
                "metrics_ran": ran, "skipped": skipped, "modes": self.modes}


def evaluate_run(path: str | Path, cfg: EvalConfig | None = None, write: bool = True) -> dict:
    """Evaluate one run directory; write ``eval/eval.json`` and ``eval/metrics.png``."""
    result = RunEvaluation(read_run(path), cfg or EvalConfig()).evaluate()
    result["table"] = table_rows([result])
    if write:
        write_result(result)
    return result


def write_result(result: dict) -> None:
    """``RUN_DIR/eval/eval.json`` and, when any metric ran, ``RUN_DIR/eval/metrics.png``."""
    out = Path(result["run_dir"]) / "eval"
    out.mkdir(exist_ok=True)
    if result["metrics_ran"]:
        from .plots import plot_metrics

        plot_metrics(result, out / "metrics.png")
    write_json(out / "eval.json", result)


def headline(result: dict, mode: str) -> dict[str, float | None]:
    """The comparison-table values of one mode: one number per metric (gap similarity: one
    per gap; first failure: seconds per measure)."""
    out = {}
    for metric, m in result["modes"][mode].items():
        if metric == "gap_similarity":
            out.update({f"gap_similarity@{g}": v for g, v in m["value"].items()})
        elif metric == "first_failure":
            out.update({f"first_failure[{k}] s": v["value"] for k, v in m.items()})
        elif metric == "psnr":
            out.update({"psnr loop closure": m["value"], "psnr generated": m["mean_generated"],
                        "precision@K": m["precision_at_k"],
                        "precision ceiling": m["precision_ceiling"]})
        else:
            out[metric] = m["value"]
    return out


def table_rows(results: list[dict]) -> list[dict]:
    return [{"run": r["run"], "mode": mode, **headline(r, mode)}
            for r in results for mode in r["modes"]]


def evaluate_runs(paths: list[str | Path], cfg: EvalConfig | None = None,
                  output: str | Path | None = None) -> dict:
    """Evaluate several run directories; the comparison table goes into each run's eval.json
    (key ``comparison``) and, when given, into ``output``."""
    cfg = cfg or EvalConfig()
    results = [evaluate_run(p, cfg, write=False) for p in paths]
    table = table_rows(results)
    for result in results:
        result["comparison"] = table
        write_result(result)
    report = {"schema_version": SCHEMA_VERSION, "runs": results, "comparison": table}
    if output is not None:
        write_json(output, report)
    return report
