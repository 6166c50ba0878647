"""A training process killed (SIGKILL) while it writes a checkpoint resumes from the last good
checkpoint and then reproduces the uninterrupted run's metrics exactly.

The child process trains the tiny smoke model through the real CLI
(``experiments.train.main``) with checkpoints at steps 4, 8 and 12. One hook holds the
*commit* of the step-8 checkpoint open: orbax has written every array and the metadata into
``8.orbax-checkpoint-tmp*`` and is about to rename it to ``8`` — the widest crash window, in
which a non-atomic writer would leave a complete-looking but unfinished checkpoint. The child
signals the parent by creating a marker file and the parent sends SIGKILL, a real,
uncatchable kill of the whole process (the asynchronous writer thread included). The hook only
pins down *when* the kill lands; the write, the kill and the resume are the production code
paths.

Checks: the killed run left checkpoint 4 and an uncommitted step-8 temporary directory (so the
kill did land mid-write), no checkpoint 8; the restarted run resumes from step 4 (manifest's
resume history), ignores the temporary directory, and its ``metrics.jsonl`` equals an
uninterrupted run's record for record (every deterministic field bitwise; wall-clock fields
excluded). Negative control: the killed run's log holds records past step 4 that the resume had
to cut, so comparing without the truncation would fail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import metrics, train

REPO = Path(__file__).resolve().parents[1]
ARGV = [
    "--preset",
    "tiny",
    "--smoke",
    "--steps",
    "12",
    "--checkpoint-every",
    "4",
    "--eval-every",
    "4",
    "--log-every",
    "1",
    "--no-tensorboard",
]
HOLD_STEP = 8

# Runs in the child: hold the commit (tmp -> final rename) of checkpoint HOLD_STEP open and
# announce it; the parent kills the process while it waits.
_CHILD = """
import asyncio, sys, time
from pathlib import Path
from orbax.checkpoint._src.path import atomicity

workdir, marker, hold = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
original = atomicity.AtomicRenameTemporaryPath.finalize

async def finalize(self):
    if self.get_final().name == hold:
        marker.write_text(str(self.get()))
        while True:
            await asyncio.sleep(1.0)
    return await original(self)

atomicity.AtomicRenameTemporaryPath.finalize = finalize
from experiments import train
train.main(sys.argv[4:] + ["--workdir", workdir])
"""


def _kill_during_checkpoint(workdir: Path, marker: Path, timeout: float = 240.0) -> str:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(workdir), str(marker), str(HOLD_STEP), *ARGV],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(
                    "the child ended before its step-8 checkpoint commit:\n"
                    + proc.stdout.read()[-4000:]
                )
            if time.monotonic() > deadline:
                raise AssertionError("the child did not reach the step-8 checkpoint commit")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return marker.read_text()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    tmp_dir = _kill_during_checkpoint(root / "killed", root / "marker")
    ckpts = root / "killed" / "checkpoints"
    after_kill = {
        "entries": sorted(p.name for p in ckpts.iterdir()),
        "tmp_dir": tmp_dir,
        "tmp_files": sorted(str(p.relative_to(tmp_dir)) for p in Path(tmp_dir).rglob("*")),
        "records": metrics.read_jsonl(root / "killed" / "metrics.jsonl"),
    }
    resumed = train.main(ARGV + ["--workdir", str(root / "killed")])
    full = train.main(ARGV + ["--workdir", str(root / "full")])
    return dict(root=root, after_kill=after_kill, resumed=resumed, full=full)


def test_the_kill_landed_during_the_step8_checkpoint_write(runs):
    k = runs["after_kill"]
    assert "4" in k["entries"] and "8" not in k["entries"], k["entries"]
    tmp_name = Path(k["tmp_dir"]).name
    assert tmp_name.startswith("8.") and "tmp" in tmp_name and tmp_name in k["entries"]
    # the temporary checkpoint holds written data (state arrays, metadata), not just a
    # directory: the kill hit a complete-looking but uncommitted checkpoint
    assert any(f.startswith("state") for f in k["tmp_files"]), k["tmp_files"]
    assert any(f.startswith("meta") for f in k["tmp_files"]), k["tmp_files"]
    # negative control for the comparison below: the killed run logged steps past its last
    # good checkpoint (4), which the resume must cut
    assert max(r["step"] for r in k["records"]) > 4


def test_resume_after_the_kill_reproduces_the_uninterrupted_run(runs):
    root = runs["root"]
    man = json.loads((root / "killed" / "manifest.json").read_text())
    assert [r["from_step"] for r in man["resumes"]] == [4]
    full = metrics.read_jsonl(root / "full" / "metrics.jsonl")
    resumed = metrics.read_jsonl(root / "killed" / "metrics.jsonl")
    assert [(r["kind"], r["step"]) for r in resumed] == [(r["kind"], r["step"]) for r in full]
    # JSON floats round-trip exactly: == compares the float32 values bitwise
    assert metrics.deterministic(resumed) == metrics.deterministic(full)
    assert runs["resumed"]["final_val_loss"] == runs["full"]["final_val_loss"]
    # the resumed run committed its own checkpoints 8 and 12
    names = {p.name for p in (root / "killed" / "checkpoints").iterdir()}
    assert {"8", "12"} <= names
