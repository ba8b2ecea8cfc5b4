"""The student's gradient written out (engine.student_grad) against autograd's, first and second order."""

import dataclasses
import shutil

import pytest
import torch
import torch.nn.functional as F

from tad_plugin.engine.convnet import ConvNetConfig, forward, init_params
from tad_plugin.engine.matching import MatchingConfig, TrajectoryMatcher
from tad_plugin.engine.student_grad import student_grad, student_grad_recomputing_elementwise


def _autograd(cfg, w, x, target, scale):
    loss = scale * F.cross_entropy(forward(cfg, w, x[None])[0], target)
    return torch.autograd.grad(loss, w, create_graph=True)[0]


@pytest.mark.parametrize("size,depth", [((32, 32), 3), ((7, 9), 3), ((16, 16), 4)])
@pytest.mark.parametrize("soft", [False, True])
def test_equals_autograd_in_value_and_derivative(size, depth, soft):
    """float64, CIFAR-sized and odd-sized maps (avg-pool drops a row/column), hard and soft targets."""
    torch.manual_seed(0)
    cfg = ConvNetConfig(3, 5, size, width=8, depth=depth)
    w = (init_params(cfg, 1, torch.Generator().manual_seed(1)).double()
         + 0.05 * torch.randn(1, cfg.num_params, dtype=torch.float64)).requires_grad_()  # norm affine != (1, 0)
    x = torch.randn(6, 3, *size, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    target = logits.softmax(-1) if soft else torch.tensor([0, 1, 2, 3, 4, 0])
    ref, new = _autograd(cfg, w, x, target, 0.7), student_grad(cfg, w, x, target, 0.7)
    assert (new - ref).abs().max() <= 1e-11 * ref.abs().max()
    v = torch.randn_like(ref)
    inputs = (w, x, logits) if soft else (w, x)
    second_ref = torch.autograd.grad((ref * v).sum(), inputs, retain_graph=True)
    second_new = torch.autograd.grad((new * v).sum(), inputs)
    for a, b in zip(second_ref, second_new):
        assert (b - a).abs().max() <= 1e-11 * a.abs().max()


def test_rejects_several_networks():
    cfg = ConvNetConfig(1, 2, (8, 8), width=4)
    with pytest.raises(ValueError, match=r"\[1, P\]"):
        student_grad(cfg, torch.zeros(2, cfg.num_params), torch.zeros(3, 1, 8, 8), torch.zeros(3, dtype=torch.long))


def _distill(inner_grad, trajectories, images, labels, net, recompute_steps=False, compile_mode="default"):
    cfg = MatchingConfig(iterations=3, syn_steps=3, expert_epochs=1, max_start_epoch=2, lr_img=10.0,
                         dsa_strategy="color_crop_cutout_flip_scale_rotate", eval_every=0, log_every=3, seed=5,
                         inner_grad=inner_grad, recompute_steps=recompute_steps, compile_mode=compile_mode)
    return TrajectoryMatcher(net, cfg, trajectories, images, labels, progress=False).run()


@pytest.fixture(scope="module")
def small_problem():
    torch.manual_seed(0)
    net = ConvNetConfig(3, 4, (12, 12), width=8, depth=2)
    g = torch.Generator().manual_seed(0)
    trajectories = [torch.cumsum(0.02 * torch.randn(4, net.num_params, generator=g), 0)
                    + init_params(net, 1, generator=g) for _ in range(2)]
    images = torch.randn(8, 3, 12, 12, generator=g)
    return net, trajectories, images, torch.arange(8) % 4


@pytest.mark.parametrize("inner_grad", ["explicit",
                                        pytest.param("compiled", marks=pytest.mark.skipif(
                                            shutil.which("c++") is None and shutil.which("g++") is None,
                                            reason="torch.compile on the CPU needs a C++ compiler"))])
def test_distillation_matches_the_double_backward(inner_grad, small_problem):
    """Three iterations with DSA: the same images and step size as upstream's create_graph route."""
    net, trajectories, images, labels = small_problem
    ref = _distill("autograd", trajectories, images, labels, net)
    new = _distill(inner_grad, trajectories, images, labels, net)
    assert not torch.equal(ref.images, images)  # the images moved
    assert torch.allclose(new.images, ref.images, rtol=1e-4, atol=1e-5)
    assert new.syn_lr == pytest.approx(ref.syn_lr, rel=1e-4)


def test_recomputed_steps_give_the_same_distillation(small_problem):
    """Recomputing each unrolled step in the final backward changes memory, not a single value."""
    net, trajectories, images, labels = small_problem
    kept = _distill("explicit", trajectories, images, labels, net)
    recomputed = _distill("explicit", trajectories, images, labels, net, recompute_steps=True)
    assert torch.equal(recomputed.images, kept.images) and recomputed.syn_lr == kept.syn_lr


def test_recomputing_the_elementwise_work_gives_the_same_distillation(small_problem):
    """Keeping the products and recomputing the rest changes memory and time, not a single value; compiled,
    the same values as upstream's route up to rounding."""
    net, trajectories, images, labels = small_problem
    kept = _distill("explicit", trajectories, images, labels, net)
    selective = _distill("explicit", trajectories, images, labels, net, recompute_steps="elementwise")
    assert torch.equal(selective.images, kept.images) and selective.syn_lr == kept.syn_lr
    if shutil.which("c++") or shutil.which("g++"):  # torch.compile on the CPU needs a C++ compiler
        ref = _distill("autograd", trajectories, images, labels, net)
        compiled = _distill("compiled", trajectories, images, labels, net, recompute_steps="elementwise")
        assert torch.allclose(compiled.images, ref.images, rtol=1e-4, atol=1e-5)
        assert compiled.syn_lr == pytest.approx(ref.syn_lr, rel=1e-4)


def test_cudnn_benchmark_is_on_during_each_iteration_and_restored_after(small_problem, monkeypatch):
    """``cudnn_benchmark=True`` turns cuDNN's algorithm search on for the iteration only (the process's setting
    comes back, also when the iteration raises); False leaves the process's setting alone."""
    net, trajectories, images, labels = small_problem
    seen = []
    real = TrajectoryMatcher._student_grad

    def spy(self, w, x, y):
        seen.append(torch.backends.cudnn.benchmark)
        return real(self, w, x, y)

    monkeypatch.setattr(TrajectoryMatcher, "_student_grad", spy)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    cfg = MatchingConfig(iterations=2, syn_steps=2, expert_epochs=1, max_start_epoch=2, eval_every=0,
                         cudnn_benchmark=True)
    matcher = TrajectoryMatcher(net, cfg, trajectories, images, labels, progress=False)
    matcher.step()
    assert seen == [True, True] and torch.backends.cudnn.benchmark is False
    monkeypatch.setattr(TrajectoryMatcher, "_student_grad", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        matcher.step()
    assert torch.backends.cudnn.benchmark is False
    seen.clear()
    monkeypatch.setattr(TrajectoryMatcher, "_student_grad", spy)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)  # a user's own setting stays
    TrajectoryMatcher(net, dataclasses.replace(cfg, cudnn_benchmark=False), trajectories, images, labels,
                      progress=False).step()
    assert seen == [True, True] and torch.backends.cudnn.benchmark is True
    with pytest.raises(TypeError, match="cudnn_benchmark must be True or False"):
        dataclasses.replace(cfg, cudnn_benchmark="yes")


class _CountConvolutions(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the convolution operators (forward and backward) that run while it is active, and the
    normalisations' ``var_mean`` (elementwise work a step's forward does)."""

    def __init__(self):
        super().__init__()
        self.count = self.var_means = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default):
            self.count += 1
        if func.overloadpacket is torch.ops.aten.var_mean:
            self.var_means += 1
        return func(*args, **(kwargs or {}))


def test_the_elementwise_route_recomputes_no_convolution():
    """In the backward, the full recomputation runs the step's convolutions again; the elementwise route runs
    exactly as many convolutions as keeping everything (none recomputed) but does recompute the normalisations
    (it keeps less than everything)."""
    cfg = ConvNetConfig(3, 4, (8, 8), width=4, depth=2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 8, 8, generator=g)
    target = torch.tensor([0, 1, 2, 3, 0])
    w = init_params(cfg, 1, generator=g)

    def backward_convolutions(fn):
        w_, x_ = w.clone().requires_grad_(), x.clone().requires_grad_()
        out = fn(cfg, w_, x_, target, 1.0)
        with _CountConvolutions() as mode:
            out.pow(2).sum().backward()
        return (mode.count, mode.var_means), x_.grad

    (kept, kept_norms), grad_kept = backward_convolutions(student_grad)
    (selective, selective_norms), grad_selective = backward_convolutions(student_grad_recomputing_elementwise)
    (full, _), _ = backward_convolutions(
        lambda *a: torch.utils.checkpoint.checkpoint(student_grad, *a, use_reentrant=False))
    assert selective == kept < full
    assert kept_norms == 0 and selective_norms == cfg.depth  # each layer's statistics recomputed, once
    assert torch.equal(grad_selective, grad_kept)


def test_the_compile_mode_reaches_torch_compile_and_marks_each_iteration(small_problem, monkeypatch):
    """``reduce-overhead`` compiles with that mode (CUDA graphs on a GPU) and opens a new generation of graph
    outputs per iteration; torch.compile itself is stubbed out here (the GPU measures it), so the values must
    equal the explicit route's."""
    from tad_plugin.engine import matching
    from tad_plugin.engine.student_grad import student_grad

    compiled, marks = [], []
    monkeypatch.setattr(matching.torch, "compile", lambda fn, **kw: compiled.append(kw) or fn)
    monkeypatch.setattr(matching.torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    matching._compiled_student_grad.cache_clear()
    try:
        net, trajectories, images, labels = small_problem
        graphs = _distill("compiled", trajectories, images, labels, net, compile_mode="reduce-overhead")
        assert matching._compiled_student_grad("reduce-overhead", False) is student_grad
    finally:
        matching._compiled_student_grad.cache_clear()
    assert compiled == [{"dynamic": False, "mode": "reduce-overhead"}] and len(marks) == 3  # 3 iterations
    plain = _distill("explicit", trajectories, images, labels, net)
    assert torch.equal(graphs.images, plain.images) and graphs.syn_lr == plain.syn_lr
    with pytest.raises(ValueError, match="compile_mode must be one of"):
        MatchingConfig(inner_grad="compiled", compile_mode="fastest")


def test_inner_grad_is_validated():
    with pytest.raises(ValueError, match="inner_grad"):
        MatchingConfig(inner_grad="finite-differences")
    with pytest.raises(ValueError, match="channels_last"):
        MatchingConfig(inner_grad="explicit", channels_last=True)
    with pytest.raises(ValueError, match="recompute_steps"):
        MatchingConfig(recompute_steps=True)
    with pytest.raises(ValueError, match="recompute_steps"):
        MatchingConfig(recompute_steps="elementwise")
    with pytest.raises(ValueError, match="recompute_steps must be one of"):
        MatchingConfig(inner_grad="explicit", recompute_steps="convolutions")
    assert MatchingConfig(inner_grad="compiled", recompute_steps="elementwise").recompute_steps == "elementwise"
