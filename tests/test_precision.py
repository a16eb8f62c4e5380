"""precision.py: local models compute in bf16 on a GPU and on a CPU that multiplies bf16 natively."""

import pytest

from psychocounsel import precision
from psychocounsel.backends.transformers_local import _dtype_name
from psychocounsel.config import DPOConfig, RewardModelConfig

EPYC = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
OLDER = "processor\t: 0\nflags\t\t: fpu avx2 fma avx512f\nbugs\t\t: avx512_bf16_in_a_bug_name\n"


def test_native_bf16_reads_the_flags_lines_only():
    assert precision.native_bf16(EPYC)
    assert precision.native_bf16("flags\t: sse amx_bf16 amx_tile\n")
    assert not precision.native_bf16(OLDER)
    assert not precision.native_bf16("")


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_the_cpu_and_an_explicit_choice_wins(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: native)
    assert _dtype_name("auto", "cpu") == ("bfloat16" if native else "float32")
    assert _dtype_name("auto", "cuda:1") == "bfloat16"
    assert _dtype_name("auto", "mps") == "float32"
    assert _dtype_name("float32", "cuda") == "float32"
    assert precision.train_bf16(None, on_cpu=True) is native
    assert precision.train_bf16(None, on_cpu=False) is True
    assert precision.train_bf16(False, on_cpu=False) is False
    assert precision.train_bf16(True, on_cpu=True) is True


@pytest.mark.parametrize("native", [True, False])
def test_the_trainers_arguments_carry_it(monkeypatch, tmp_path, native):
    from psychocounsel.train import dpo, reward

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: native)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert dpo._dpo_config(tmp_path / "p", DPOConfig()).bf16 is native
    assert dpo._dpo_config(tmp_path / "p", DPOConfig(bf16=False)).bf16 is False
    assert reward._reward_config(tmp_path / "r", RewardModelConfig(), 16).bf16 is native
    assert reward._reward_config(tmp_path / "r", RewardModelConfig(bf16=False), 16).bf16 is False
