"""GPU check: privfl's CUDA path, where a GPU is lent, with figures in one JSON file.

Four checks, each timed and recorded (``--out``, default ``bench/results/gpu_check.json``):

1. ``training``: privfl's client training (``client.training.train_locally``) of the MLP
   and the CNN on digits (1,437 records, batch 64), non-private and with DP-SGD through
   Opacus (hooks and ghost), on ``cuda``: ms per epoch, ratio to non-private, CUDA peak
   memory, and that the model and the recorded privacy event are right;
2. ``ray_gpu_share``: a local Ray with the GPU, four actors asking for a quarter GPU each
   (what privfl's launcher asks for a simulated client on a CUDA machine): all four run
   at once and each sees CUDA;
3. ``flower``: a 2-round DP simulation of four owners through privfl's launcher
   (SuperLink, Ray, ServerApp, ClientApps) with ``device = "cuda"``: it finishes, every
   ledger verifies, and the Ray workers show up as CUDA processes in ``nvidia-smi``;
4. ``environment``: torch, CUDA, the GPU, the driver.

Without a GPU it says so, runs check 1 on the CPU with few repetitions (the CPU path
still works) and exits 0.  With a GPU but a CPU-only torch it says so and exits 2.

    python -m bench.gpu_check                 # ~1-2 min with a GPU, ~15 s without
    python -m bench.gpu_check --no-flower     # skip the Flower run
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/gpu_check.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import parser, write_results

NAME = "gpu_check"


def nvidia_smi(*query: str) -> list[list[str]] | None:
    """Rows of ``nvidia-smi --query-...=... --format=csv,noheader``; None where there is no nvidia-smi."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", *query, "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [[cell.strip() for cell in line.split(",")] for line in out.splitlines() if line.strip()]


def environment() -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {"torch": torch.__version__, "torch_cuda_build": torch.version.cuda,
                           "cuda_available": torch.cuda.is_available(),
                           "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
    gpus = nvidia_smi("--query-gpu=name,memory.total,driver_version,utilization.gpu")
    env["nvidia_smi_gpus"] = gpus
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device_count=torch.cuda.device_count(), name=props.name,
                   memory_gib=round(props.total_memory / 2**30, 1), capability=f"{props.major}.{props.minor}")
    return env


def check_training(device_name: str, seconds: float) -> list[dict[str, Any]]:
    """Check 1: privfl's client training on ``device_name``, non-private and DP (hooks, ghost)."""
    import warnings

    import torch

    from privfl.client.training import train_locally
    from privfl.models import build_model
    from privfl.protocol import TrainingPlan
    from privfl.simulations.datasets import load_dataset

    warnings.filterwarnings("ignore")
    device = torch.device(device_name)
    train, _ = load_dataset("digits", 0)
    data = train.to_torch()
    rows = []
    for model_name in ("mlp", "cnn"):
        weights = build_model(model_name, 64, 10, seed=0).state_dict()
        base = None
        for mode in ("nonprivate", "hooks", "ghost"):
            dp = mode != "nonprivate"
            row: dict[str, Any] = {"model": model_name, "mode": mode, "device": device_name, "records": len(data),
                                   "batch_size": 64}
            try:
                def once(epochs: int, seed: int) -> tuple[float, Any]:
                    model = build_model(model_name, 64, 10)
                    model.load_state_dict(weights)
                    plan = TrainingPlan(local_epochs=epochs, batch_size=64, learning_rate=0.5, momentum=0.0, dp=dp,
                                        noise_multiplier=1.0 if dp else 0.0, max_grad_norm=1.0,
                                        grad_sample_mode=mode if dp else "hooks")
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    t = time.perf_counter()
                    update = train_locally(model, data, plan, device, seed=seed, noise_seed=seed)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    return time.perf_counter() - t, update

                once(1, 0)  # warm-up (CUDA context, kernels, first make_private)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                short, long_, reps = [], [], 0
                deadline = time.perf_counter() + seconds
                while reps < 5 or time.perf_counter() < deadline:
                    short.append(once(1, reps + 1)[0])
                    seconds_long, update = once(3, reps + 1)
                    long_.append(seconds_long)
                    reps += 1
                epoch_ms = 1000 * (min(long_) - min(short)) / 2  # the fastest of each: interference only adds
                row.update(ok=True, reps=reps, epoch_ms=epoch_ms,
                           state_on_cpu=all(v.device.type == "cpu" for v in update.state_dict.values()),
                           finite=all(bool(torch.isfinite(v).all()) for v in update.state_dict.values()))
                if dp:
                    row["privacy_event"] = str(update.privacy_event)
                    row["event_ok"] = update.privacy_event is not None and update.privacy_event.steps == 3 * 23
                if device.type == "cuda":
                    row["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
                if mode == "nonprivate":
                    base = epoch_ms
                elif base:
                    row["ratio_to_nonprivate"] = epoch_ms / base
            except Exception as err:  # noqa: BLE001  recorded, not raised: the other checks still run
                row.update(ok=False, error=f"{type(err).__name__}: {err}"[:500])
            rows.append(row)
            print(f"  training {model_name} {mode:>10} on {device_name}: "
                  + (f"{row['epoch_ms']:.1f} ms/epoch" if row.get("ok") else row.get("error", "")), flush=True)
    return rows


def check_ray_gpu_share() -> dict[str, Any]:
    """Check 2: four actors with a quarter GPU each, on one GPU, at once."""
    import ray

    temp = tempfile.mkdtemp(prefix="privfl-gpu-ray-")
    started = time.perf_counter()
    try:
        ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, _temp_dir=temp, log_to_driver=False)

        @ray.remote(num_cpus=1, num_gpus=0.25)
        class Client:
            def probe(self) -> dict[str, Any]:
                import torch

                x = torch.ones(1024, 1024, device="cuda")
                return {"pid": os.getpid(), "cuda": torch.cuda.is_available(), "sum": float((x @ x).sum()),
                        "visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "gpu_ids": ray.get_gpu_ids()}

        actors = [Client.remote() for _ in range(4)]
        probes = ray.get([a.probe.remote() for a in actors], timeout=180)
        return {"ok": all(p["cuda"] for p in probes) and len({p["pid"] for p in probes}) == 4,
                "actors": probes, "seconds": time.perf_counter() - started}
    except Exception as err:  # noqa: BLE001
        return {"ok": False, "error": f"{type(err).__name__}: {err}"[:500], "seconds": time.perf_counter() - started}
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def check_flower(rounds: int = 2, owners: int = 4) -> dict[str, Any]:
    """Check 3: a DP simulation through privfl's launcher with device = cuda; Ray workers seen on the GPU."""
    from privfl.cli.simulate import load_config
    from privfl.simulations.launcher import run_simulation

    root = Path(tempfile.mkdtemp(prefix="privfl-gpu-run-"))
    seen: dict[str, str] = {}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for row in nvidia_smi("--query-compute-apps=pid,process_name,used_memory") or []:
                seen.setdefault(row[0], " ".join(row[1:]))
            stop.wait(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.perf_counter()
    try:
        config = load_config("quickstart", [f"num-owners={owners}", f"num-rounds={rounds}", 'device="cuda"'])
        result = run_simulation(config.replace(run_dir=str(root / "run")), stream=False)
        history = result.history
        out = {"seconds": time.perf_counter() - started, "status": history["status"],
               "rounds": [r["round"] for r in history["rounds"]],
               "updates": sum(len(r.get("participants", [])) for r in history["rounds"]),
               "failed_updates": history.get("failed_updates"), "final_test_accuracy": history["final_test_accuracy"],
               "audit_ok": result.audit.ok if result.audit is not None else None,
               "launcher_timings": result.timings, "gpu_processes": seen}
        ray_on_gpu = [pid for pid, name in seen.items() if "ray" in name.lower() or "python" in name.lower()]
        out["ok"] = (history["status"] == "finished" and out["updates"] == rounds * owners and bool(out["audit_ok"])
                     and len(ray_on_gpu) >= 2)  # the ServerApp's evaluation and at least one ClientApp worker
        return out
    except Exception as err:  # noqa: BLE001
        return {"ok": False, "error": f"{type(err).__name__}: {err}"[:1000], "seconds": time.perf_counter() - started,
                "gpu_processes": seen}
    finally:
        stop.set()
        watcher.join()
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--no-flower", action="store_true", help="skip the Flower simulation (check 3)")
    p.add_argument("--seconds", type=float, default=3.0, help="timing budget per training case (default 3)")
    args = p.parse_args(argv)
    env = environment()
    print(f"environment: {json.dumps(env)}", flush=True)
    checks: dict[str, Any] = {"environment": env}
    code = 0
    if not env["cuda_available"]:
        if env["nvidia_smi_gpus"] and not env["torch_cuda_build"]:
            print("A GPU is present but this torch is a CPU build: install a CUDA torch to check the GPU path.")
            code = 2
        else:
            print("No GPU here: checking the CPU path only (client training and Opacus on cpu).")
        checks["training"] = check_training("cpu", seconds=min(args.seconds, 0.5))
        checks["gpu"] = False
        ok = all(r.get("ok") for r in checks["training"])
    else:
        checks["gpu"] = True
        checks["training"] = check_training("cuda", seconds=args.seconds)
        checks["ray_gpu_share"] = check_ray_gpu_share()
        print(f"  ray gpu share: {'ok' if checks['ray_gpu_share'].get('ok') else checks['ray_gpu_share']}", flush=True)
        if not args.no_flower:
            checks["flower"] = check_flower()
            print(f"  flower run on cuda: {'ok' if checks['flower'].get('ok') else checks['flower']}", flush=True)
        ok = all(r.get("ok") for r in checks["training"]) and checks["ray_gpu_share"].get("ok") \
            and checks.get("flower", {"ok": True}).get("ok")
        code = 0 if ok else 1
    write_results(args.out, NAME, quick=False, settings={"seconds": args.seconds, "flower": not args.no_flower},
                  results=checks["training"], checks=checks, ok=ok)
    print(f"gpu check: {'ok' if ok else 'FAILED'} ({'GPU' if checks['gpu'] else 'no GPU: CPU path only'})")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
