"""Latency, throughput and activation memory: against sleeps, hand counts and mode handling."""

import time

import pytest
import torch
from torch import nn

from kdlib.efficiency import (
    ActivationMemory,
    activation_memory,
    benchmark,
    flops,
    measure_latency,
    throughput,
)
from kdlib.models import MLP, SmallCNN, count_parameters, model_size_bytes


class Sleeper(nn.Module):
    """A 'model' whose forward pass takes a known time (and records its mode and grad state)."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds
        self.linear = nn.Linear(4, 2)
        self.calls = []

    def forward(self, x):
        self.calls.append((self.training, torch.is_grad_enabled(), tuple(x.shape)))
        time.sleep(self.seconds)
        return self.linear(x)


def test_latency_is_the_median_of_timed_calls_after_warmup():
    model = Sleeper(0.01)
    seconds = measure_latency(model, (4,), batch_size=3, repeats=5, warmup=2)
    # sleep() never returns early; a loaded machine can only make it longer
    assert 0.01 <= seconds < 0.1
    assert len(model.calls) == 2 + 5
    assert all(shape == (3, 4) for _, _, shape in model.calls)
    # evaluation mode without autograd during the calls, training mode restored afterwards
    assert all(not training and not grad for training, grad, _ in model.calls)
    assert model.training


def test_median_ignores_an_outlier():
    class SlowOnce(Sleeper):
        def forward(self, x):
            out = super().forward(x)
            if len(self.calls) == 3:  # the second timed call (after 1 warmup) is 20x slower
                time.sleep(0.2)
            return out

    seconds = measure_latency(SlowOnce(0.01), (4,), batch_size=1, repeats=5, warmup=1)
    assert seconds < 0.1


def test_throughput_is_batch_over_latency():
    model = Sleeper(0.02)
    samples_per_second = throughput(model, (4,), batch_size=64, repeats=3, warmup=0)
    # 64 samples per >= 20 ms: at most 3,200 per second, and not absurdly fewer
    assert 64 / 0.1 < samples_per_second <= 64 / 0.02


def test_eval_mode_restored_when_model_was_in_eval():
    model = MLP(64, (8,), 10).eval()
    measure_latency(model, (1, 8, 8), repeats=2, warmup=0)
    activation_memory(model, (1, 8, 8))
    assert not model.training


def test_activation_memory_of_an_mlp_by_hand():
    # MLP(64 -> 32 -> 10): leaves Flatten, Linear(64, 32), ReLU, Linear(32, 10)
    model = MLP(64, (32,), 10)
    mem = activation_memory(model, (1, 8, 8), batch_size=5)
    assert isinstance(mem, ActivationMemory)
    floats = 5 * (64 + 32 + 32 + 10)  # outputs of flatten, fc, relu, head
    assert mem.total == 4 * floats
    # the largest input + output of one leaf: Flatten (64 in, 64 out) per sample
    assert mem.peak == 4 * 5 * (64 + 64)


def test_activation_memory_scales_with_batch_and_width():
    small, wide = SmallCNN(width=4), SmallCNN(width=16)
    one = activation_memory(small, (1, 8, 8), batch_size=1)
    eight = activation_memory(small, (1, 8, 8), batch_size=8)
    assert eight.total == 8 * one.total and eight.peak == 8 * one.peak
    assert activation_memory(wide, (1, 8, 8)).total > one.total


def test_benchmark_keys_and_sizes():
    model = SmallCNN(width=4)
    result = benchmark(model, (1, 8, 8), throughput_batch=16, repeats=3)
    assert set(result) == {
        "parameters",
        "model_bytes",
        "flops",
        "latency_ms",
        "throughput",
        "activation_bytes",
        "activation_bytes_total",
    }
    assert result["parameters"] == count_parameters(model)
    assert result["model_bytes"] == model_size_bytes(model)
    assert result["latency_ms"] > 0 and result["throughput"] > 0
    assert 0 < result["activation_bytes"] <= result["activation_bytes_total"]
    assert result["flops"] == flops(model, (1, 8, 8))


def test_flops_of_an_mlp_by_hand_and_independent_of_threads():
    model = MLP(64, (32,), 10)
    # two matrix products: 2 * (64 * 32 + 32 * 10) operations per sample (a multiply-add is 2)
    assert flops(model, (1, 8, 8)) == 2 * (64 * 32 + 32 * 10)
    assert flops(model, (1, 8, 8), batch_size=5) == 5 * 2 * (64 * 32 + 32 * 10)
    threads = torch.get_num_threads()
    benchmark(model, (1, 8, 8), throughput_batch=8, repeats=3, threads=1)
    assert torch.get_num_threads() == threads, "benchmark restores the thread count"
    wide, narrow = SmallCNN(width=32), SmallCNN(width=8)
    assert flops(wide, (1, 8, 8)) > 10 * flops(narrow, (1, 8, 8))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_shape": ()}, "input_shape"),
        ({"input_shape": (1, 0, 8)}, "input_shape"),
        ({"batch_size": 0}, "batch_size"),
        ({"repeats": 0}, "repeats"),
        ({"warmup": -1}, "warmup"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    args = {"input_shape": (1, 8, 8), "batch_size": 1, "repeats": 2, "warmup": 0} | kwargs
    with pytest.raises(ValueError, match=message):
        measure_latency(MLP(64, (8,), 10), **args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_latency_is_synchronised():
    # a large matmul chain: without synchronisation the clock would stop at the launch
    model = nn.Sequential(*[nn.Linear(4096, 4096) for _ in range(8)]).cuda()
    seconds = measure_latency(model, (4096,), batch_size=4096, repeats=3, warmup=1)
    flops = 8 * 2 * 4096**3
    assert flops / seconds < 2e15  # faster than 2 PFLOP/s in fp32 would mean no sync
