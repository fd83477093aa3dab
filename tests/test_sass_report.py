"""tools/sass_report.py, the static per-kernel report behind ``make sass-report``: its parsers of
ptxas -v, cuobjdump -sass and -elf output (on small captured samples), the occupancy formula, the
--check comparison, and one real run on the PTX probe kernel when nvcc and cuobjdump are there."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"
SCRIPT = TOOLS / "sass_report.py"


@pytest.fixture(scope="module")
def sr():
    spec = importlib.util.spec_from_file_location("sass_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


PTXAS = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN2kx4cuda2tc48_GLOBAL__N__2bdc598b_15_attention_tc_cu_ff7692079dq_kernelI6__halfLi64EEEvNS_4attn8GradArgsEPKT_S9_PKfPf' for 'sm_90'
ptxas info    : Function properties for _ZN2kx4cuda2tc48_GLOBAL__N__2bdc598b_15_attention_tc_cu_ff7692079dq_kernelI6__halfLi64EEEvNS_4attn8GradArgsEPKT_S9_PKfPf
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 8 bytes cumulative stack size
ptxas info    : Compile time = 141.038 ms
ptxas info    : Function properties for __internal_trig_reduction_slowpathd
    40 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function '_Z6normalPd' for 'sm_90'
ptxas info    : Function properties for _Z6normalPd
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 31 registers, used 1 barriers, 64 bytes smem
"""

# Two functions. _Z4loopPf: an outer loop [0x30, 0xb0] (two back edges to 0x30, merged) around an
# inner one [0x50, 0x90], and the self-branch every function ends with (not a loop).
# _Z4tailv: two loops without HMMA, the second the larger.
SASS = """\

	code for sm_90
		Function : _Z4loopPf
	.headerflags	@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                                          /* 0x00000a00ff017b82 */
                                                                                                   /* 0x000ff00000000800 */
        /*0010*/                   STL [R1], R2 ;                                                  /* 0x0000000201007387 */
                                                                                                   /* 0x000fe20000100800 */
        /*0020*/                   LDGSTS.E.BYPASS.LTC128B.128 [R3], desc[UR4][R4.64] ;            /* 0x0000000004037fae */
                                                                                                   /* 0x000fe2000b981a04 */
        /*0030*/                   LDSM.16.M88.4 R8, [R3] ;                                        /* 0x000000000308783b */
                                                                                                   /* 0x000e280000000200 */
        /*0040*/                   HMMA.16816.F32.BF16 R24, R8, R10, R24 ;                         /* 0x0000000a0818723c */
                                                                                                   /* 0x001fe20000041818 */
        /*0050*/                   LDSM.16.MT88.4 R12, [R3+0x200] ;                                /* 0x00020000030c783b */
                                                                                                   /* 0x000e280000004200 */
        /*0060*/                   HMMA.16816.F32.BF16 R16, R8, R12, R16 ;                         /* 0x0000000c0810723c */
                                                                                                   /* 0x001fe20000041810 */
        /*0070*/                   HMMA.16816.F32.BF16 R20, R8, R14, R20 ;                         /* 0x0000000e0814723c */
                                                                                                   /* 0x000fe20000041814 */
        /*0080*/                   LDL R2, [R1] ;                                                  /* 0x0000000001027983 */
                                                                                                   /* 0x000ea20000100800 */
        /*0090*/              @!P0 BRA 0x50 ;                                                      /* 0xfffffffc00ec8947 */
                                                                                                   /* 0x000fea000383ffff */
        /*00a0*/               @P1 BRA 0x30 ;                                                      /* 0xfffffffc00e01947 */
                                                                                                   /* 0x000fea000383ffff */
        /*00b0*/             @!UP0 BRA 0x30 ;                                                      /* 0xfffffffc00dc8947 */
                                                                                                   /* 0x000fea000b83ffff */
        /*00c0*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;                                   /* 0x0000000000007b1d */
                                                                                                   /* 0x000fec0000010000 */
        /*00d0*/                   STG.E desc[UR4][R4.64], R16 ;                                   /* 0x0000001004007986 */
                                                                                                   /* 0x000fe2000c101904 */
        /*00e0*/                   EXIT ;                                                          /* 0x000000000000794d */
                                                                                                   /* 0x000fea0003800000 */
        /*00f0*/                   BRA 0xf0;                                                       /* 0xfffffffc00fc7947 */
                                                                                                   /* 0x000fc0000383ffff */
		..........


		Function : _Z4tailv
	.headerflags	@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDG.E R2, desc[UR4][R4.64] ;
        /*0010*/                   FADD R2, R2, 1 ;
        /*0020*/                   SHFL.BFLY PT, R3, R2, 0x1, 0x1f ;
        /*0030*/               @P0 BRA 0x10 ;
        /*0040*/                   LDS R5, [R6] ;
        /*0050*/                   FADD R5, R5, R2 ;
        /*0060*/                   STS [R6], R5 ;
        /*0070*/                   IADD3 R6, R6, 0x4, RZ ;
        /*0080*/                   ISETP.NE.AND P0, PT, R6, R7, PT ;
        /*0090*/               @P0 BRA 0x40 ;
        /*00a0*/                   EXIT ;
        /*00b0*/                   BRA 0xb0;
		..........
"""

ELF = """\
.nv.info._Z4loopPf
	<0x1>
	Attribute:	EIATTR_CUDA_API_VERSION
	Format:	EIFMT_SVAL
	Value:	0x82 
	<0x9>
	Attribute:	EIATTR_MAXREG_COUNT
	Format:	EIFMT_HVAL
	Value:	0xff
	<0x16>
	Attribute:	EIATTR_MAX_THREADS
	Format:	EIFMT_SVAL
	Value:	0x80 0x1 0x1 
	<0x17>
	Attribute:	EIATTR_CRS_STACK_SIZE
	Format:	EIFMT_SVAL
	Value:	0x0 

.nv.info._Z4tailv
	<0x1>
	Attribute:	EIATTR_CUDA_API_VERSION
	Format:	EIFMT_SVAL
	Value:	0x82 

.nv.constant0._Z4tailv
	Attribute:	EIATTR_MAX_THREADS
	Value:	0x400 0x1 0x1 
"""


def test_parse_ptxas(sr):
    funcs = sr.parse_ptxas(PTXAS)
    dq = funcs["_ZN2kx4cuda2tc48_GLOBAL__N__2bdc598b_15_attention_tc_cu_ff7692079dq_kernelI6__halfLi64EEEvNS_4attn8GradArgsEPKT_S9_PKfPf"]
    assert dq == {"entry": True, "arch": "sm_90", "regs": 40, "barriers": 1, "smem": 0, "stack": 8,
                  "cumulative_stack": 8, "spill_stores": 4, "spill_loads": 4}
    assert funcs["_Z6normalPd"]["regs"] == 31 and funcs["_Z6normalPd"]["smem"] == 64
    assert funcs["_Z6normalPd"]["spill_stores"] == 0
    slow = funcs["__internal_trig_reduction_slowpathd"]
    assert not slow["entry"] and slow["stack"] == 40 and slow["regs"] is None


def test_parse_sass_counts_and_loops(sr):
    funcs = sr.parse_sass(SASS)
    assert list(funcs) == ["_Z4loopPf", "_Z4tailv"]
    instrs = funcs["_Z4loopPf"]
    assert len(instrs) == 16
    assert instrs[9] == (0x90, "BRA", "0x50")  # the predicate is dropped
    counts = sr.opcode_counts(instrs)
    assert {k: counts.get(k, 0) for k in ("HMMA", "LDSM", "LDGSTS", "LDL", "STL", "BAR", "STG", "BRA")} == {
        "HMMA": 3, "LDSM": 2, "LDGSTS": 1, "LDL": 1, "STL": 1, "BAR": 1, "STG": 1, "BRA": 4}

    loops = sr.find_loops(instrs)
    assert [(l["start"], l["end"], l["instructions"], l["depth"]) for l in loops] == [
        (0x30, 0xb0, 9, 0), (0x50, 0x90, 5, 1)]
    outer, inner = loops
    assert {k: outer[k] for k in ("HMMA", "LDSM", "LDGSTS", "LDL", "STL")} == {
        "HMMA": 3, "LDSM": 2, "LDGSTS": 0, "LDL": 1, "STL": 0}
    assert {k: inner[k] for k in ("HMMA", "LDSM", "LDGSTS", "LDL", "STL")} == {
        "HMMA": 2, "LDSM": 1, "LDGSTS": 0, "LDL": 1, "STL": 0}
    assert sr.main_loop(loops) is outer  # the most HMMA
    assert sr.in_loops(instrs, loops, "LDL") == 1 and sr.in_loops(instrs, loops, "STL") == 0

    # Equal HMMA: the innermost loop is the main loop (one tile, not the loop around the tiles).
    inner_all = [dict(inner), dict(outer, HMMA=2)]
    assert sr.main_loop(inner_all)["start"] == 0x50

    tail = sr.find_loops(funcs["_Z4tailv"])
    assert [(l["start"], l["end"]) for l in tail] == [(0x10, 0x30), (0x40, 0x90)]
    assert sr.main_loop(tail)["start"] == 0x40  # no HMMA: the largest loop
    assert sr.main_loop([]) is None


def test_parse_elf_attributes(sr):
    attrs = sr.parse_elf_attributes(ELF)
    assert attrs == {"_Z4loopPf": {"MAXREG_COUNT": [255], "MAX_THREADS": [128, 1, 1]}}
    assert sr.block_threads(attrs["_Z4loopPf"]) == 128
    assert sr.block_threads({}) is None
    assert sr.block_threads({"REQNTID": [32, 4, 1], "MAX_THREADS": [256, 1, 1]}) == 128


def test_kernel_record_without_launch_bounds_assumes_a_block_size(sr):
    ptx = sr.parse_ptxas(PTXAS)["_Z6normalPd"]
    kernel = sr.kernel_record("csrc/cuda/x.cu", "_Z6normalPd", ptx, sr.parse_sass(SASS)["_Z4loopPf"], {})
    assert kernel["max_threads"] is None
    assert kernel["occupancy"]["assumed_threads"] and kernel["occupancy"]["threads"] == sr.ASSUMED_THREADS
    assert kernel["main_loop"]["HMMA"] == 3 and kernel["counts"]["LDGSTS"] == 1
    assert kernel["in_loops"] == {"LDL": 1, "STL": 0}
    kernel["name"] = "normal"
    row = sr.markdown_table([kernel])[2]
    assert "| unknown |" in row and "†" in row and "| 3 / 2 / 0 (LDL 1, STL 0) |" in row


def test_occupancy_formula(sr):
    # 255 registers -> 256 per thread, 8192 per warp: 2 warps per sub-partition, 8 per SM.
    assert sr.occupancy(255, 128, 0) == {"blocks": 2, "warps": 8, "percent": 12.5, "limiter": "registers"}
    # 32 registers at 256 threads: the full 64 warps, registers and warp slots both at the limit.
    assert sr.occupancy(32, 256, 0) == {"blocks": 8, "warps": 64, "percent": 100.0, "limiter": "warps, registers"}
    # 48 KB static shared + 1 KB reserved: 4 blocks in 228 KB.
    assert sr.occupancy(32, 128, 48 * 1024) == {"blocks": 4, "warps": 16, "percent": 25.0,
                                                "limiter": "shared memory"}
    # 40 registers round up to 40 (a multiple of 8): 12 warps per sub-partition, 48 per SM.
    assert sr.occupancy(40, 128, 0)["warps"] == 48
    # 37 registers count as 40.
    assert sr.occupancy(37, 128, 0)["warps"] == 48
    # Registers go per sub-partition: 80 registers give 6 warps in each of 4, 24 (not 65536/2560 = 25).
    assert sr.occupancy(80, 32, 0) == {"blocks": 24, "warps": 24, "percent": 37.5, "limiter": "registers"}
    # Small blocks: 32 blocks per SM at most.
    assert sr.occupancy(16, 32, 0) == {"blocks": 32, "warps": 32, "percent": 50.0, "limiter": "blocks"}
    # Dynamic shared memory when known: 70.75 KB + 1 KB -> 3 blocks.
    assert sr.occupancy(40, 128, 0, dynamic_smem=72448)["warps"] == 12
    assert sr.occupancy(32, 2048, 0)["blocks"] == 0  # more threads than a block may have


def test_normalize_mangled(sr):
    a = "_ZN2kx4cuda2tc48_GLOBAL__N__2bdc598b_15_attention_tc_cu_ff7692079dq_kernelI6__halfLi64EEEvNS_4attn8GradArgsEPKT_S9_PKfPf"
    b = "_ZN2kx4cuda2tc48_GLOBAL__N__dbbbfc84_15_attention_tc_cu_ff7692079dq_kernelI6__halfLi64EEEvNS_4attn8GradArgsEPKT_S9_PKfPf"
    want = "_ZN2kx4cuda2tc12_GLOBAL__N_19dq_kernelI6__halfLi64EEEvNS_4attn8GradArgsEPKT_S9_PKfPf"
    assert sr.normalize_mangled(a) == sr.normalize_mangled(b) == want  # the hash of another checkout's path
    assert sr.normalize_mangled("_Z6normalPd") == "_Z6normalPd"


def fake_kernel(sr, key="_Z1kv", **changes):
    loop = {"start": 0, "end": 0x100, "instructions": 16, "depth": 0,
            **{k: 0 for k in sr.LOOP_COUNTED}, "HMMA": 64, "LDSM": 32, "LDGSTS": 8}
    loop.update(changes.pop("loop", {}))
    counts = {**{k: 0 for k in sr.COUNTED}, "HMMA": 128, "LDSM": 64, "LDGSTS": 16}
    counts.update(changes.pop("counts", {}))
    kernel = {"key": key, "name": key[3:-1], "file": "csrc/cuda/x.cu", "regs": 100, "spill_stores": 0,
              "spill_loads": 0, "stack": 0, "static_smem": 0, "max_threads": 128, "counts": counts, "main_loop": loop}
    kernel.update(changes)
    return kernel


def test_check_comparison(sr):
    baseline = sr.make_baseline({"arch": "sm_90", "nvcc": "13.0.88", "flags": "",
                                 "kernels": [fake_kernel(sr), fake_kernel(sr, "_Z1jv")]})
    json.dumps(baseline)  # what --update-baseline writes

    def check(*kernels):
        return sr.compare(baseline, {"nvcc": "13.0.88", "kernels": list(kernels)})

    same = check(fake_kernel(sr), fake_kernel(sr, "_Z1jv"))
    assert same == ([], [])
    # Registers may move a little, counts of local memory may drop (a note, not a failure).
    assert check(fake_kernel(sr, regs=108), fake_kernel(sr, "_Z1jv"))[0] == []
    problems, notes = check(fake_kernel(sr, spill_stores=4, spill_loads=4, regs=109), fake_kernel(sr, "_Z1jv"))
    assert problems == ["k (x.cu): spill stores B 0 -> 4", "k (x.cu): spill loads B 0 -> 4",
                        "k (x.cu): registers 100 -> 109 (more than +8)"]
    problems, _ = check(fake_kernel(sr, counts={"HMMA": 96, "LDL": 1}, loop={"HMMA": 48}), fake_kernel(sr, "_Z1jv"))
    assert problems == ["k (x.cu): LDL instructions 0 -> 1", "k (x.cu): HMMA 128 -> 96",
                        "k (x.cu): HMMA per main-loop iteration 64 -> 48"]
    problems, _ = check(fake_kernel(sr, loop={"LDSM": 40, "LDGSTS": 0}), fake_kernel(sr, "_Z1jv"))
    assert problems == ["k (x.cu): LDSM per main-loop iteration 32 -> 40",
                        "k (x.cu): LDGSTS per main-loop iteration 8 -> 0"]
    problems, _ = check(fake_kernel(sr), fake_kernel(sr, "_Z1jv"), fake_kernel(sr, "_Z1iv"))
    assert problems == ["new kernel: i (csrc/cuda/x.cu)"]
    problems, _ = check(fake_kernel(sr))
    assert problems == ["kernel gone: j (csrc/cuda/x.cu)"]
    assert sr.compare(baseline, {"kernels": [fake_kernel(sr)]}, files=["csrc/cuda/y.cu"])[0] == [
        "new kernel: k (csrc/cuda/x.cu)"]  # --files: only the baseline's kernels of those files expected
    # Fewer spills than the baseline: a note, no failure.
    better = sr.make_baseline({"arch": "sm_90", "nvcc": "13.0.88", "flags": "", "kernels": [fake_kernel(sr, spill_loads=8)]})
    problems, notes = sr.compare(better, {"nvcc": "13.0.88", "kernels": [fake_kernel(sr)]})
    assert problems == [] and notes == ["k (x.cu): spill loads B 8 -> 0 (better; refresh the baseline to keep it)"]
    # Another nvcc: the failure says so.
    problems, notes = sr.compare(baseline, {"nvcc": "12.8.93", "kernels": [fake_kernel(sr, regs=200), fake_kernel(sr, "_Z1jv")]})
    assert len(problems) == 1 and "nvcc 13.0.88" in notes[-1]


def test_committed_baseline_is_keyed_by_normalized_mangled_names(sr):
    baseline = json.loads((TOOLS.parent / "bench" / "sass_baseline.json").read_text())
    assert baseline["arch"] == "sm_90" and baseline["kernels"]
    for key, entry in baseline["kernels"].items():
        assert key.split(":")[-1].startswith("_Z") and "_GLOBAL__N__" not in key, key
        assert set(entry) >= {"name", "file", "regs", "spill_stores", "spill_loads", "LDL", "STL", "HMMA", "LDSM",
                              "LDGSTS", "loop_HMMA", "loop_LDSM", "loop_LDGSTS"}
        assert entry["file"].startswith("csrc/cuda/") and entry["file"].endswith(".cu")


def test_real_run_on_the_probe_kernel(sr, tmp_path):
    nvcc = sr.find_tool("nvcc")
    if nvcc is None or sr.find_cuda_binary("cuobjdump") is None or sr.find_cuda_binary("nvdisasm") is None:
        pytest.skip("needs nvcc, cuobjdump and nvdisasm")
    res = subprocess.run([sys.executable, str(SCRIPT), "--files", "csrc/cuda/ptx_probe.cu", "--out", str(tmp_path),
                          "--nvcc", nvcc], capture_output=True, text=True, timeout=300, cwd=TOOLS.parent)
    assert res.returncode == 0, res.stderr
    assert "probe_kernel" in res.stdout and (tmp_path / "sass_report.md").is_file()
    report = json.loads((tmp_path / "sass_report.json").read_text())
    (kernel,) = report["kernels"]
    assert kernel["name"] == "kx::cuda::probe_kernel"
    assert kernel["max_threads"] == 32  # __launch_bounds__(32)
    # The probe's 5 ldmatrix, 3 cp.async (LDGSTS) and one m16n8k16 mma, with no loop and no spills.
    assert (kernel["counts"]["LDSM"], kernel["counts"]["LDGSTS"], kernel["counts"]["HMMA"]) == (5, 3, 1)
    assert kernel["main_loop"] is None and kernel["spill_stores"] == 0 and kernel["counts"]["LDL"] == 0
