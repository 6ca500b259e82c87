"""One tiny sweep's whole life through every interruption a user or a machine deals it, each followed by
its own `--resume` and its own assertions (a failure names the step): Ctrl-C while the machine's speed is
measured, while the first trial starts, during a proxy evaluation; the driver SIGKILLed (with its local
Ray) once a trial finished; SIGTERM during training once another finished; SIGHUP between phases; Ctrl-C
during the final evaluation; twice in a row (the lease released even then). Then `--resume` completes it with every trial run once and logged once; the
finished sweep started again is refused with its summary, a changed setting by name; and a driver killed
before its queued MLflow writes is caught up by the next `--resume`.

One life instead of one per fault: each fault still happens for real (real signals, a real Ray, Tune and
Train), at the moment it names. Faults that must be the first thing to happen keep lives of their own
(test_bad_input: Ctrl-C while the command starts; test_tracking_record: a killed driver on a tracking
server, a lost cluster)."""

import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from support import (
    PROXY_MAP,
    ROOT,
    assert_resumed_cleanly,
    driver_env,
    finished_trials,
    forget_after,
    interrupt_at,
    mlflow_runs,
    proxy_steps,
    stop_group,
    sweep_command,
    tiny_sweep_config,
    wait_for_stale_lease,
)

STALE_AFTER = 2  # tiny_sweep_config's sweep.lease_stale_after (heartbeats of 1 s)
CONTINUED = re.compile(r"Continue with:\n  python sweeps/ratio_search.py --config \S+ --resume\n")


@pytest.mark.slow
@pytest.mark.timeout(1250)  # about 3x its measured time (tests/README.md)
def test_a_sweep_stopped_at_every_moment_resumes_without_rerunning_or_duplicating(tmp_path, tiny_model_dir):
    config = tiny_sweep_config(tmp_path, tiny_model_dir, "life")
    folder = tmp_path / "sweeps" / "life"
    lease = folder / "driver.lease"
    assert yaml.safe_load(config.read_text())["sweep"]["lease_stale_after"] == STALE_AFTER

    def stopped(step: str, status: int, err: str, phase: str) -> None:
        assert status == 130 and "Traceback" not in err, (step, err[-3000:])
        assert f"Sweep interrupted in its {phase} phase" in err and CONTINUED.search(err), (step, err[-3000:])
        assert not (folder / "finished.txt").exists(), step

    def run_until(finished: int, **output) -> subprocess.Popen:
        """`--resume`, left running until more than `finished` trials finished (it must still run then)."""
        driver = subprocess.Popen(
            sweep_command(config, "--resume"), cwd=tmp_path, env=driver_env(), start_new_session=True, text=True,
            **output,
        )  # fmt: skip
        deadline = time.time() + 600
        while time.time() < deadline and driver.poll() is None and len(finished_trials(tmp_path, "life")) <= finished:
            time.sleep(0.5)
        if driver.poll() is not None:  # say why: its output, where the test took it
            log = output["stdout"].name if hasattr(output.get("stdout"), "name") else None
            said = (
                open(log).read()[-4000:] if log else "".join(p.read()[-4000:] for p in (driver.stdout, driver.stderr))
            )
            raise AssertionError(f"the sweep ended (exit {driver.returncode}) before it could be interrupted\n{said}")
        return driver

    # 1. Ctrl-C while the machine's speed is measured (a fresh start): no search phase made.
    status, out, err = interrupt_at(config, tmp_path, "measuring this machine's speed")
    stopped("1 calibration", status, err, "calibration")
    assert not list(folder.glob("search")) and "== search" not in out
    # 2. Ctrl-C while the first trial starts, before its first report.
    status, out, err = interrupt_at(config, tmp_path, ": starting on ", ("--resume",))
    stopped("2 trial start", status, err, "search")
    assert not list(folder.glob("seeds-*")) and "step 3/6" not in out
    # 3. Ctrl-C during a proxy evaluation of a checkpoint.
    status, out, err = interrupt_at(config, tmp_path, "evaluating its checkpoint", ("--resume",))
    stopped("3 proxy evaluation", status, err, "search")
    assert not list(folder.glob("seeds-*"))

    # 4. The driver SIGKILLed with its local Ray once a trial finished; its lease left behind goes stale.
    driver = run_until(0, stdout=open(tmp_path / "killed.log", "w"), stderr=subprocess.STDOUT)
    strays = stop_group(driver)
    assert not strays, f"4 SIGKILL: processes of the killed driver's session outlived its group's kill: {strays}"
    before = finished_trials(tmp_path, "life")
    assert before, "4 SIGKILL: no trial had finished"
    wait_for_stale_lease(lease, STALE_AFTER)

    # 5. `--resume` takes the sweep over; SIGTERM (as `kill` sends) during training once another trial finished:
    # taken as a Ctrl-C (Ray's own SIGTERM handler would dump a stack and exit 134).
    driver = run_until(len(before), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    driver.send_signal(signal.SIGTERM)
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 130 and "Took over sweep 'life'" in out, ("5 training", out[-2000:], err[-3000:])
    assert "Traceback" not in err and "SIGTERM received" not in err, ("5 training", err[-3000:])
    assert not lease.exists(), "5 training: the lease was not released"
    phase = re.search(r"interrupted in its (\S+) phase", err)
    assert phase and CONTINUED.search(err), ("5 training", err[-2000:])
    if phase.group(1) == "search":
        assert not list(folder.glob("seeds-*")), "5 training: a later phase started"
    logged = proxy_steps(tmp_path, "life")  # the trials finished before: nothing trained or logged again
    assert all(len(s) == len(set(s)) >= before[t] for t, s in logged.items() if t in before), (before, logged)
    _, runs = mlflow_runs(tmp_path, "life")
    assert all(r.info.status != "RUNNING" for r in runs if r.data.tags.get("sweep.role") == "trial"), "5 training"

    # 6. SIGHUP (a dropped SSH session) between phases; 7. Ctrl-C during the final evaluation; 8. twice in a row
    # (the second exits at once, its lease released: the --resume it prints works at once).
    status, out, err = interrupt_at(config, tmp_path, "== seeds-", ("--resume",), sig=signal.SIGHUP)
    assert re.search(r"Sweep interrupted in its seeds-\S+ phase", err) and status == 130, ("6 between", err[-3000:])
    assert "Traceback" not in err and "final evaluation" not in out, "6 between phases"
    assert not lease.exists(), "6 between phases: the lease was not released"
    status, out, err = interrupt_at(config, tmp_path, "final evaluation on xquad-r started", ("--resume",))
    stopped("7 final evaluation", status, err, "final evaluation")
    status, out, err = interrupt_at(
        config, tmp_path, "final evaluation on xquad-r started", ("--resume",), second_after_s=0.05
    )
    assert status == 130 and "Traceback" not in err, ("8 twice", err[-3000:])
    assert "Second Ctrl-C: exiting at once, in the final evaluation phase." in err or CONTINUED.search(err), err[-3000:]
    assert not lease.exists(), "8 twice: the lease was not released"

    # 9. `--resume` completes it: every trial once, none trained or logged again.
    done = subprocess.run(
        sweep_command(config, "--resume"), cwd=tmp_path, env=driver_env(), capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, ("9 resume", done.stdout[-3000:] + done.stderr[-3000:])
    assert_resumed_cleanly(tmp_path, "life", trials=4)

    # 10. The same command again, without --resume: refused before Ray starts, the finished sweep untouched;
    # --resume with a setting that changes results: refused by name.
    again = subprocess.run(
        sweep_command(config), cwd=tmp_path, env=driver_env(), capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 2 and re.fullmatch(
        r"error: sweep 'life' finished: 4 trials in [\d.]+ min; best multi/map \d\.\d{4} over [12] "
        r"seed\(s\) at mono_ratio=[\d.e-]+, temperature=[\d.e-]+, lang_temperature=inf\. Start another "
        r"with --name NEW, or add trials with --resume --set sweep.trials=N\.\n",
        again.stderr,
    ), ("10 finished", again.stderr)
    changed = subprocess.run(
        sweep_command(config, "--resume", "--set", "method.batch_size=4"),
        cwd=tmp_path, env=driver_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert changed.returncode == 2 and "with changed settings: method.batch_size." in changed.stderr, changed.stderr

    # 11. A driver killed after Tune saved a trial's last report and its end, before its queued MLflow writes
    # (seen on a tracking server): the run RUNNING, without what that report logs. `--resume` logs it from
    # the report its trial kept (signed), once, and ends the run.
    client, runs = mlflow_runs(tmp_path, "life")
    victim = next(r for r in runs if r.data.tags.get("sweep.role") == "trial")
    counts = finished_trials(tmp_path, "life")
    keys = [k for k in victim.data.metrics if k.startswith(("train/", PROXY_MAP.rsplit("/", 2)[0], "trial/active_s"))]
    history = {k: [(m.step, m.value) for m in client.get_metric_history(victim.info.run_id, k)] for k in keys}
    forget_after(tmp_path / "mlflow.db", victim.info.run_id, step=3)  # its step-6 report: checkpoint_every 3
    trial = victim.data.tags["tune.trial_id"]
    assert len(client.get_metric_history(victim.info.run_id, PROXY_MAP)) == counts[trial] - 1
    caught = subprocess.run(
        sweep_command(config, "--resume"), cwd=tmp_path, env=driver_env(), capture_output=True, text=True, timeout=900
    )
    assert caught.returncode == 0, ("11 catch-up", caught.stdout[-3000:] + caught.stderr[-3000:])
    assert (
        f"trial {trial}: 1 report(s) and its end (FINISHED), which a killed driver had not logged, logged now"
    ) in caught.stdout, caught.stdout[-3000:]
    assert caught.stdout.count("which a killed driver had not logged") == 1, caught.stdout[-3000:]  # only its own
    assert {k: [(m.step, m.value) for m in client.get_metric_history(victim.info.run_id, k)] for k in keys} == history
    assert_resumed_cleanly(tmp_path, "life", trials=4)
    # More trials for a finished sweep (a round of its own), sweep.trials only growing: test_tracking_record.py.


def test_a_ctrl_c_inside_a_weakref_callback_is_delivered_after_it_not_printed_and_lost():
    """Issue 33 (met by step 7 of the life above on a loaded machine, and at the registration): a Ctrl-C
    arriving while a WeakKeyDictionary's callback ran raised KeyboardInterrupt there, where Python prints
    "Exception ignored in ..." with a traceback and drops it. Now that Ctrl-C is delivered again once the
    callback's frame has returned. In a fresh process with SIGINT handled: its signal state is the test's
    alone (seen: in a suite started in the background, SIGINT ignored, the Ctrl-C sent again never came)."""
    probe = textwrap.dedent(
        """
        import signal, sys, time, weakref
        from sweeps import interrupts

        signal.signal(signal.SIGINT, signal.default_int_handler)  # handled, as `interrupts.install` leaves it: a
        # suite started in the background (no job control) runs with SIGINT ignored, and so did this process
        namespace = {}
        exec(compile("import sys\\nframe = sys._getframe()", weakref.__file__, "exec"), namespace)
        returned = stopping = None
        try:
            interrupts._on_sigint(signal.SIGINT, namespace["frame"])  # a frame of weakref.py
            returned, stopping = True, interrupts._stopping
            time.sleep(10)  # the same Ctrl-C, delivered again to the main thread once that frame returned
        except KeyboardInterrupt:
            sys.exit(0 if returned and not stopping else 3)  # 29bd854: raised in that frame, printed and lost
        sys.exit(4)
        """
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
