"""What a ``lorakit tune`` trial costs beyond its own training (run by hand).

Runs a study of ``--trials`` trials over ``train.lr`` on the SST-2 recipe of the study
(``configs/study/sst2.yaml``: the embedded MiniLM encoder, 3200 sentences, 200 steps of 16,
LoRA r = 8), measured on a validation split carved from the training sentences, and reads each
trial's times from ``trials.json``:

- ``cycle_seconds``: from the trial's start in the study to the next trial's start (the last
  trial: to the end of ``tune``), so it holds everything a worker does per trial: the sampler,
  the trial (config, data, the deep copy of the shared base, the adapter, the run, the SHA-256
  check), telling the study, rewriting the outputs; the last one also the final plots and importances;
- ``seconds``: the trial as the worker's objective saw it (the part of the cycle inside Optuna's
  objective call);
- ``run_seconds``: the run's own work as its summary's ``phase_seconds`` report it (its steps,
  evaluations and checkpoints: ``train``, ``evaluate``, ``generate``, ``save``);
- overhead = ``cycle_seconds − run_seconds``, reported against ``cycle_seconds`` per trial and in total.

The study's first trial loads the base model once (``base load``, reported apart); the ratio is
over the trials after it, which a study of N trials repeats N − 1 times. The study's own start
(reading the config and data, opening the storage) comes once and is reported as ``setup_s``.
Writes ``benchmarks/results/tune_overhead.json``.

    OMP_NUM_THREADS=2 python benchmarks/tune_overhead.py --trials 4
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from datetime import datetime
from pathlib import Path

import optuna
import torch
import yaml

from lorakit.io.json_text import json_text
from lorakit.tune import tune

RECIPE = Path(__file__).resolve().parent.parent / "configs" / "study" / "sst2.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "tune_overhead.json"))
    args = parser.parse_args()
    raw = yaml.safe_load(RECIPE.read_text())
    raw.pop("compare", None)
    raw["method"] = {**raw.get("method", {}), "name": "lora"}
    with tempfile.TemporaryDirectory() as folder:
        raw["tune"] = {"trials": args.trials, "pruner": "none", "metric": "accuracy", "output_dir": folder,
                       "space": {"train.lr": {"low": 1e-4, "high": 3e-3, "log": True}}}
        began = datetime.now()
        tune(raw, progress=True)
        ended = datetime.now()
        trials = json.loads((Path(folder) / "trials.json").read_text())["trials"]
        starts = [t.datetime_start for t in sorted(_study(folder).get_trials(), key=lambda t: t.number)]
    ends = [*starts[1:], ended]
    rows = [{"trial": t["trial"], "cycle_seconds": round((end - start).total_seconds(), 3), "seconds": t["seconds"],
             "run_seconds": t["run_seconds"]} for t, start, end in zip(trials, starts, ends, strict=True)]
    for row in rows:
        row["overhead_s"] = round(row["cycle_seconds"] - row["run_seconds"], 3)
        row["overhead_share"] = round(row["overhead_s"] / row["cycle_seconds"], 4)
    later = rows[1:]
    result = {"recipe": str(RECIPE.name), "trials": rows, "study_seconds": round((ended - began).total_seconds(), 1),
              "setup_s": round((starts[0] - began).total_seconds(), 3),
              "base_load_trial_overhead_s": rows[0]["overhead_s"],
              "later_trials_overhead_share_median": statistics.median(r["overhead_share"] for r in later),
              "later_trials_overhead_share_total": round(sum(r["overhead_s"] for r in later)
                                                         / sum(r["cycle_seconds"] for r in later), 4),
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
              "torch": torch.__version__}
    Path(args.out).write_text(json_text(result, indent=2) + "\n")
    print(json_text(result, indent=2))


def _study(folder: str) -> optuna.Study:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(f"{folder}/study.journal"))
    return optuna.load_study(study_name="lorakit", storage=storage)


if __name__ == "__main__":
    main()
