"""Building the native kernels: lazily, once per CPU, past a killed build, once per machine when it fails, and
with the right flags on macOS and ARM."""

import os
import signal
import subprocess
import sys
import textwrap
import time
import types

import pytest

from cnnlab import native
from cnnlab.native import build
from cnnlab.cpu import cpu_flags

ARM_CPUINFO = textwrap.dedent("""\
    processor\t: 0
    BogoMIPS\t: 50.00
    Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
    CPU implementer\t: 0x41
    """)


class FakeCompile:
    """Stands in for the compiler: counts its calls, sees whether a partial output was there, returns a module."""

    def __init__(self, fail: str | None = None):
        self.calls, self.saw_partial, self.fail = 0, [], fail

    def __call__(self, name, folder):
        self.calls += 1
        self.saw_partial.append(any(folder.glob(f"*{build.PARTIAL}")))
        if self.fail:
            raise RuntimeError(self.fail)
        (folder / f"{name}.so").write_bytes(b"not a real module")
        return types.ModuleType(name)


def test_building_or_summarizing_a_model_compiles_nothing(tmp_path):
    env = {**os.environ, "CNNLAB_HOME": str(tmp_path)}  # an empty cache: loading would mean compiling
    code = ("from cnnlab.config import load_config; from cnnlab.model import build_model; from cnnlab import native; "
            "import torch; m = build_model(load_config(preset='seed').model.layers); "
            "m(torch.zeros(2, 1, 28, 28).contiguous(memory_format=torch.channels_last)); "
            "print(native._state, sorted(p.name for p in native.build.Path(r'%s').iterdir()))" % tmp_path)
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "{} []" and out.stderr == ""
    summary = subprocess.run([sys.executable, "-m", "cnnlab", "summary", "--preset", "seed"], env=env, check=True,
                             capture_output=True, text=True)
    assert "native" not in summary.stdout + summary.stderr and not any(tmp_path.iterdir())


def test_a_failed_build_is_recorded_once_and_not_retried(tmp_path):
    compile_ = FakeCompile(fail="g++: not found")
    lines = []
    module, why = build.Builder(tmp_path, "cnnlab_native_x").load(lines.append, compile_)
    assert module is None and compile_.calls == 1
    record = tmp_path / "cnnlab_native_x.failed.json"
    assert why == (f"could not be built (RuntimeError: g++: not found); torch's ops serve. Recorded in {record}, "
                   "so no process tries again: run `python -m cnnlab.native` to retry")
    assert lines == ["native kernels: compiling them for this CPU, once (a few seconds; later runs load them "
                     "at once)", f"native kernels: {why}"]
    later = []  # another process on the same machine
    assert build.Builder(tmp_path, "cnnlab_native_x").load(later.append, compile_) == (None, why)
    assert compile_.calls == 1 and later == []
    retry = build.Builder(tmp_path, "cnnlab_native_x")
    retry.forget_failure()  # what `python -m cnnlab.native` does first
    compile_.fail = None
    module, why = retry.load(later.append, compile_)
    assert module is not None and compile_.calls == 2 and not record.exists()
    assert why.startswith(f"built in {tmp_path / 'cnnlab_native_x'} (")


def test_a_build_killed_half_way_leaves_no_lock_that_blocks(tmp_path):
    # A process that builds: it holds cnnlab's lock and the compiler's partial output exists, as in the middle of a
    # build.
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from cnnlab.native import build
        b = build.Builder(Path(r"{tmp_path}"), "cnnlab_native_y")
        with b._exclusive(print):
            b.folder.mkdir(parents=True)
            (b.folder / f"cnnlab_native_y.123{build.PARTIAL}").write_text("half a library")
            print("building", flush=True)
            time.sleep(60)
        """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "building"
        waited = []
        started = time.perf_counter()
        os.kill(child.pid, signal.SIGKILL)  # killed half-way
        child.wait()
        compile_ = FakeCompile()
        module, why = build.Builder(tmp_path, "cnnlab_native_y").load(waited.append, compile_)
        assert time.perf_counter() - started < 30
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    stale = tmp_path / "cnnlab_native_y" / f"cnnlab_native_y.123{build.PARTIAL}"
    assert module is not None and compile_.calls == 1 and compile_.saw_partial == [False]
    assert waited[0] == (f"native kernels: removed the partial output ({stale}) of a build that was stopped "
                         "half-way; building again")


def test_a_live_build_is_waited_for_and_then_used(tmp_path):
    builder = build.Builder(tmp_path, "cnnlab_native_z")
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from cnnlab.native import build
        b = build.Builder(Path(r"{tmp_path}"), "cnnlab_native_z")
        with b._exclusive(print):
            print("building", flush=True)
            time.sleep(1.5)
            b._record_failure("RuntimeError: the other process failed")
        """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "building"
        lines, compile_ = [], FakeCompile()
        module, why = builder.load(lines.append, compile_)
    finally:
        child.wait()
    assert lines == ["native kernels: another cnnlab process is building them; waiting for it"]
    assert module is None and compile_.calls == 0  # its outcome is this process's outcome
    assert why.startswith("could not be built (RuntimeError: the other process failed); torch's ops serve.")


@pytest.mark.parametrize("system, machine, env, cflags, ldflags", [
    ("Linux", "x86_64", {}, ["-O3", "-march=native", "-fopenmp"], ["-fopenmp"]),
    ("Linux", "x86_64", {"ATEN_CPU_CAPABILITY": "avx2"}, ["-O3", "-march=native", "-mno-avx512f", "-fopenmp"],
     ["-fopenmp"]),
    ("Linux", "aarch64", {}, ["-O3", "-mcpu=native", "-fopenmp"], ["-fopenmp"]),
    ("Darwin", "arm64", {}, ["-O3"], []),  # Apple clang: no -fopenmp; it picks the CPU itself
    ("Darwin", "x86_64", {}, ["-O3", "-march=native"], []),
])
def test_compile_flags_per_platform(system, machine, env, cflags, ldflags):
    assert build.compile_flags(system, machine, env) == (cflags, ldflags)


def test_arm_cpu_features_come_from_the_features_line_and_key_the_build(monkeypatch):
    flags = cpu_flags(ARM_CPUINFO)
    assert {"asimd", "atomics", "asimddp"} <= flags and len(flags) == 16
    assert cpu_flags("flags\t\t: fpu sse2 avx2\n") == {"fpu", "sse2", "avx2"}
    import cnnlab.cpu as cpu

    monkeypatch.setattr(cpu, "cpu_flags", lambda: flags)
    with_asimd = build.build_name()
    monkeypatch.setattr(cpu, "cpu_flags", lambda: flags - {"asimddp"})
    assert build.build_name() != with_asimd  # another CPU, another build: never code made for a different one


def test_prepare_is_once_per_process_and_switchable_off(monkeypatch):
    monkeypatch.setenv("CNNLAB_NATIVE", "0")
    native.forget()
    try:
        assert native.prepare() is None and native.status() == "switched off by CNNLAB_NATIVE=0"
        monkeypatch.setenv("CNNLAB_NATIVE", "1")
        assert native.prepare() is None  # decided once per process
    finally:
        native.forget()


def test_the_build_is_one_compiler_call_without_torch_headers(tmp_path):
    command = build.compile_command(tmp_path / "k.so", "g++")
    assert command[0] == "g++" and command.count("-o") == 1 and command[-len(build.compile_flags()[1]) - 2:][:2] == [
        "-o", str(tmp_path / "k.so")]
    assert [c for c in command if c.endswith(".cpp")] == [str(s) for s in build.SOURCES]
    assert not any(c.startswith(("-I", "-isystem", "-L", "-l")) for c in command)  # no include or library path
    for source in [*build.SOURCES, *build.HEADERS]:
        includes = [line for line in source.read_text().splitlines() if line.startswith("#include")]
        assert includes and all(line.split()[1] in ('"kernels.h"', '"simd.h"', "<algorithm>", "<cstdint>",
                                                   "<cstring>", "<cmath>", "<vector>", "<immintrin.h>")
                                   for line in includes)


def test_a_real_build_takes_one_call_and_its_kernels_work(tmp_path):
    import torch
    import torch.nn.functional as F

    lines = []
    kernels, why = build.Builder(tmp_path, build.build_name()).load(lines.append, build.compile_kernels)
    assert kernels is not None, why
    folder = tmp_path / build.build_name()
    assert sorted(p.name for p in folder.iterdir()) == [build.BUILT, f"{build.build_name()}.so"]
    assert lines[0].startswith("native kernels: compiling them") and lines[1].startswith("native kernels: built")
    x = torch.randn(3, 8, 6, 7).contiguous(memory_format=torch.channels_last)
    out, where = kernels.max_pool_forward(x)
    assert torch.equal(out, F.max_pool2d(x, 2)) and where.dtype == torch.uint8
    with pytest.raises(ValueError, match="max_pool_forward: x must be a 4-d float32 CPU tensor, channels-last"):
        kernels.max_pool_forward(x.contiguous())  # NCHW: refused before any C code reads it
    again, why = build.Builder(tmp_path, build.build_name()).load(lines.append, build.compile_kernels)
    assert again is not None and why == f"ready in {folder}" and len(lines) == 2  # opened, not rebuilt


def test_the_build_name_is_the_same_for_every_checkout_and_changes_with_the_sources(tmp_path, monkeypatch):
    here = build.build_name()
    copies = []
    for source in [*build.SOURCES, *build.HEADERS]:  # the same sources in another checkout
        copies.append(tmp_path / source.name)
        copies[-1].write_text(source.read_text())
    monkeypatch.setattr(build, "SOURCES", copies[:len(build.SOURCES)])
    monkeypatch.setattr(build, "HEADERS", copies[len(build.SOURCES):])
    assert build.build_name() == here
    original = copies[0].read_text()
    copies[0].write_text(original + "// changed\n")
    assert build.build_name() != here
    copies[0].write_text(original)
    monkeypatch.setenv("CXX", "clang++")
    assert build.build_name() != here  # another compiler, another build


def test_no_compiler_is_a_one_line_reason(monkeypatch):
    with pytest.raises(RuntimeError, match=r"^no C\+\+ compiler \(none of c\+\+, g\+\+, clang\+\+ on the PATH, and "
                                           r"CXX unset\)$"):
        build.compiler({"PATH": "/nonexistent"})
    with pytest.raises(RuntimeError, match="^no C\\+\\+ compiler: CXX=cc9 is not a program on the PATH$"):
        build.compiler({"PATH": "/nonexistent", "CXX": "cc9"})
