"""Distillation on a 2-class toy problem (CPU): the matching loss falls, resume is exact, extras run."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from tad_plugin.data import load_dataset
from tad_plugin.engine.convnet import ConvNetConfig, forward, init_params
from tad_plugin.engine.evaluate import Evaluator
from tad_plugin.engine.matching import (
    EVALUATIONS_FILE,
    DistillDivergedError,
    MatchingConfig,
    TrajectoryMatcher,
    check_checkpoint,
    class_labels,
    read_checkpoint,
    real_init_indices,
)
from tad_plugin.engine.preprocess import Preprocessor


@pytest.fixture(scope="module")
def toy():
    """Digits 0 and 1, a width-8 ConvNet, and two short expert trajectories trained here on the CPU."""
    ds = load_dataset("digits")
    keep = ds.train_labels < 2
    images, labels = ds.train_images[keep], ds.train_labels[keep]
    pre = Preprocessor.for_dataset(ds)
    x = pre(images)
    net = ConvNetConfig(1, 2, (8, 8), width=8, depth=2)
    g = torch.Generator().manual_seed(0)
    trajectories = []
    for _ in range(2):
        w = init_params(net, 1, generator=g)
        snaps = [w[0].clone()]
        for _epoch in range(4):
            for idx in torch.randperm(len(x), generator=g).split(32):
                w.requires_grad_()
                loss = F.cross_entropy(forward(net, w, x[idx].unsqueeze(0))[0], labels[idx])
                (grad,) = torch.autograd.grad(loss, w)
                w = (w - 0.05 * grad).detach()
            snaps.append(w[0].clone())
        trajectories.append(torch.stack(snaps))
    init = real_init_indices(labels, torch.arange(len(labels)), 3, 2, generator=g)
    test_keep = ds.test_labels < 2
    return net, trajectories, x[init], labels[init], pre(ds.test_images[test_keep]), ds.test_labels[test_keep]


def test_matching_loss_decreases(toy):
    net, trajs, images, labels, _, _ = toy
    cfg = MatchingConfig(iterations=20, syn_steps=4, expert_epochs=2, max_start_epoch=1, lr_img=10.0,
                         lr_lr=1e-7, lr_teacher=0.05, dsa_strategy="none", eval_every=0, log_every=5)
    m = TrajectoryMatcher(net, cfg, trajs[:1], images, labels, progress=False)
    result = m.run()
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert len(losses) == 4
    assert losses[-1] < 0.9 * losses[0]
    assert not torch.equal(result.images, images)  # the images moved
    assert result.syn_lr > 0


def test_resume_continues_bit_for_bit(toy, tmp_path):
    net, trajs, images, labels, _, _ = toy
    cfg = MatchingConfig(iterations=6, syn_steps=3, expert_epochs=1, max_start_epoch=3, batch_syn=4,
                         lr_img=10.0, eval_every=0, checkpoint_every=3, log_every=3, seed=3)
    straight = TrajectoryMatcher(net, cfg, trajs, images, labels, progress=False).run()
    ck = tmp_path / "ck.pt"
    first = TrajectoryMatcher(net, cfg, trajs, images, labels, checkpoint=ck, progress=False)
    for _ in range(3):  # stop after the first checkpoint, as a killed run would
        first.step()
    first.save(ck)
    resumed = TrajectoryMatcher(net, cfg, trajs, images, labels, checkpoint=ck, progress=False).run()
    assert torch.equal(resumed.images, straight.images)
    assert resumed.syn_lr == straight.syn_lr
    other = MatchingConfig(**{**cfg.__dict__, "lr_img": 11.0})
    with pytest.raises(ValueError, match="different run"):
        TrajectoryMatcher(net, other, trajs, images, labels, checkpoint=ck, progress=False).run()


def test_a_checkpoint_resumes_on_another_gradient_route(toy, tmp_path):
    """The student's gradient route changes memory and speed, not the values: a run may resume on another one
    (a smaller GPU), also from a checkpoint written before ``cudnn_benchmark`` existed."""
    net, trajs, images, labels, _, _ = toy
    cfg = MatchingConfig(iterations=4, syn_steps=3, expert_epochs=1, max_start_epoch=3, batch_syn=4,
                         lr_img=10.0, eval_every=0, checkpoint_every=2, log_every=2, seed=3, inner_grad="explicit")
    straight = TrajectoryMatcher(net, cfg, trajs, images, labels, progress=False).run()
    ck = tmp_path / "ck.pt"
    first = TrajectoryMatcher(net, cfg, trajs, images, labels, checkpoint=ck, progress=False)
    for _ in range(2):
        first.step()
    first.save(ck)
    state = torch.load(ck, weights_only=False)
    del state["config"]["cudnn_benchmark"]
    torch.save(state, ck)
    other = dataclasses.replace(cfg, recompute_steps="elementwise", cudnn_benchmark=True)
    resumed = TrajectoryMatcher(net, other, trajs, images, labels, checkpoint=ck, progress=False)
    check_checkpoint(ck, read_checkpoint(ck), other, tuple(images.shape))  # no refusal: it resumes
    result = resumed.run()
    assert resumed.iteration == 4 and torch.equal(result.images, straight.images)


def test_a_finished_run_extends_to_more_iterations_as_if_started_that_long(toy, tmp_path):
    net, trajs, images, labels, _, _ = toy
    cfg = MatchingConfig(iterations=6, syn_steps=3, expert_epochs=1, max_start_epoch=3, batch_syn=4,
                         lr_img=10.0, eval_every=0, checkpoint_every=2, log_every=2, seed=5)
    straight = TrajectoryMatcher(net, cfg, trajs, images, labels, progress=False).run()
    ck = tmp_path / "ck.pt"
    short = MatchingConfig(**{**cfg.__dict__, "iterations": 4, "checkpoint_every": 4})
    first = TrajectoryMatcher(net, short, trajs, images, labels, checkpoint=ck, progress=False).run()
    assert not torch.equal(first.images, straight.images)  # 4 iterations are not 6
    extended = TrajectoryMatcher(net, cfg, trajs, images, labels, checkpoint=ck, progress=False)
    result = extended.run()
    assert torch.equal(result.images, straight.images) and result.syn_lr == straight.syn_lr
    assert extended.iteration == 6 and bool((extended._losses > 0).all())  # the first 4 losses kept
    with pytest.raises(ValueError, match="beyond iterations=4"):  # a checkpoint at 6 cannot run to 4
        TrajectoryMatcher(net, short, trajs, images, labels, checkpoint=ck, progress=False).run()


def test_a_checkpoint_from_other_experts_is_refused_not_resumed(toy, tmp_path):
    """The same settings over other trajectories (more experts, another buffer) would otherwise continue the old
    images as if they came from the new experts."""
    net, trajs, images, labels, _, _ = toy
    cfg = MatchingConfig(iterations=4, syn_steps=2, expert_epochs=1, max_start_epoch=3, batch_syn=4, lr_img=10.0,
                         eval_every=0, checkpoint_every=2, log_every=2, seed=2)
    ck = tmp_path / "ck.pt"
    TrajectoryMatcher(net, cfg, trajs[:1], images, labels, checkpoint=ck, progress=False).run()
    for other in (trajs, trajs[1:]):  # one more expert; as many, but another one
        with pytest.raises(ValueError, match=r"belongs to a distillation from other expert trajectories "
                                             r"\(1 then, \d now, or other experts\); delete it"):
            TrajectoryMatcher(net, cfg, other, images, labels, checkpoint=ck, progress=False).run()
    longer = MatchingConfig(**{**cfg.__dict__, "iterations": 6})
    assert TrajectoryMatcher(net, longer, trajs[:1], images, labels, checkpoint=ck, progress=False).run()
    with pytest.raises(ValueError, match=r"trajectory 0 is \(5,\); each must be \[epochs \+ 1 >= 2, "):
        TrajectoryMatcher(net, cfg, [torch.zeros(5)], images, labels, checkpoint=ck, progress=False)


def test_the_end_of_a_run_is_saved_whatever_the_checkpoint_interval(toy, tmp_path):
    """No interval, no timer, no evaluator: the final state still reaches the checkpoint, so the run extends."""
    net, trajs, images, labels, _, _ = toy
    cfg = MatchingConfig(iterations=3, syn_steps=2, expert_epochs=1, max_start_epoch=3, batch_syn=4, lr_img=10.0,
                         eval_every=0, checkpoint_every=0, checkpoint_seconds=0, log_every=3, seed=2)
    ck = tmp_path / "ck.pt"
    result = TrajectoryMatcher(net, cfg, trajs, images, labels, checkpoint=ck, progress=False).run()
    state = torch.load(ck, weights_only=True)
    assert state["iteration"] == 3 and torch.equal(state["images"], result.images)


def test_extras_ema_adaptive_soft_labels_and_evaluation(toy):
    net, trajs, images, labels, test_x, test_y = toy
    soft = F.one_hot(labels, 2).float() * 3
    cfg = MatchingConfig(iterations=4, syn_steps=3, expert_epochs=1, max_start_epoch=2, lr_img=10.0,
                         lr_labels=1.0, ema_decay=0.9, adaptive_length=True, eval_every=2, log_every=2)
    ev = Evaluator(net, test_x, test_y, num_nets=2, epochs=20, progress=False)
    m = TrajectoryMatcher(net, cfg, trajs, images, soft, evaluator=ev, progress=False)
    result = m.run()
    evals = [h for h in result.history if "eval" in h]
    assert [h["iteration"] for h in evals] == [0, 2, 4] and all("eval_ema" in h for h in evals)
    assert result.best is not None and result.best["mean"] > 0.5  # 2 classes
    assert not torch.equal(result.labels, soft)  # soft labels were learned
    assert result.ema_images is not None and not torch.equal(result.ema_images, result.images)


def test_every_recompute_choice_gives_the_same_att_and_datm_distillation(toy):
    """ATT keeps every unrolled step's parameters and DATM differentiates its soft labels through them: whatever
    the final backward keeps or recomputes, the images, labels and step size come out the same."""
    net, trajs, images, labels, _, _ = toy
    soft = F.one_hot(labels, 2).float() * 3
    results = []
    for recompute in (False, True, "elementwise"):
        cfg = MatchingConfig(iterations=3, syn_steps=3, expert_epochs=1, max_start_epoch=2, lr_img=10.0, lr_labels=1.0,
                             adaptive_length=True, eval_every=0, log_every=3, inner_grad="explicit",
                             recompute_steps=recompute)
        results.append(TrajectoryMatcher(net, cfg, trajs, images, soft, progress=False).run())
    assert not torch.equal(results[0].labels, soft)
    for other in results[1:]:
        assert torch.equal(other.images, results[0].images) and torch.equal(other.labels, results[0].labels)
        assert other.syn_lr == results[0].syn_lr


def test_each_evaluation_is_logged_and_kept_beside_the_checkpoint(toy, tmp_path, caplog):
    net, trajs, images, labels, test_x, test_y = toy
    cfg = MatchingConfig(iterations=4, syn_steps=2, expert_epochs=1, max_start_epoch=2, lr_img=10.0,
                         eval_every=2, checkpoint_every=0, log_every=2)
    ev = Evaluator(net, test_x, test_y, num_nets=2, epochs=10, progress=False)
    ck = tmp_path / "distill" / "checkpoint.pt"
    ck.parent.mkdir()
    m = TrajectoryMatcher(net, cfg, trajs, images, labels, evaluator=ev, checkpoint=ck, progress=False)
    seen = []
    for _ in range(3):  # iterations 0, 1, 2: evaluations at 0 and 2 (before the step), no checkpoint yet
        if m.iteration % 2 == 0:
            with caplog.at_level("INFO", logger="tad_plugin.engine.matching"):
                m.evaluate()
            seen.append(json.loads((ck.parent / EVALUATIONS_FILE).read_text()))
        m.step()
    assert not ck.exists()  # the curve survives a run stopped before its first checkpoint
    assert [[e["iteration"] for e in s] for s in seen] == [[0], [0, 2]]
    assert seen[-1] == [h for h in m.history if "eval" in h]
    assert sum("iteration 2: test accuracy" in r.message and "(2 nets" in r.message for r in caplog.records) == 1
    result = m.run()
    final = json.loads((ck.parent / EVALUATIONS_FILE).read_text())
    assert [e["iteration"] for e in final] == [0, 2, 4]
    assert final == [h for h in result.history if "eval" in h]


def test_divergence_and_bad_input_are_explained(toy):
    net, trajs, images, labels, _, _ = toy
    cfg = MatchingConfig(iterations=2, syn_steps=2, expert_epochs=1, max_start_epoch=1, lr_img=1e30,
                         lr_lr=1e30, dsa_strategy="none", eval_every=0, log_every=1)
    with pytest.raises(DistillDivergedError, match="Lower lr_img"):
        TrajectoryMatcher(net, cfg, trajs, images, labels, progress=False).run()
    # a step size that turns negative is carried on with (upstream does; it can come back), with a warning,
    # but it must be positive again when evaluation needs it: here it stays negative (lr_lr = 0)
    flat = MatchingConfig(iterations=2, syn_steps=2, expert_epochs=1, max_start_epoch=1, lr_lr=1e-30,
                          dsa_strategy="none", eval_every=0, log_every=1)
    negative = TrajectoryMatcher(net, flat, trajs, images, labels, progress=False)
    negative.syn_lr.data.fill_(-0.01)
    with pytest.raises(DistillDivergedError, match="syn_lr is -0.01 when finishing at iteration 2"):
        negative.run()
    long = MatchingConfig(iterations=1, expert_epochs=3, max_start_epoch=3, eval_every=0)
    with pytest.raises(ValueError, match="train longer experts"):
        TrajectoryMatcher(net, long, trajs, images, labels, progress=False).step()
    with pytest.raises(ValueError, match="class 1: 2"):
        real_init_indices(torch.tensor([0, 0, 0, 1, 1]), torch.arange(5), 3, 2)
    assert class_labels(3, 2).tolist() == [0, 0, 1, 1, 2, 2]


def test_a_step_size_that_comes_back_positive_is_not_an_error(toy, caplog):
    net, trajs, images, labels, _, _ = toy
    cfg = MatchingConfig(iterations=4, syn_steps=2, expert_epochs=1, max_start_epoch=1, lr_lr=1e-30,
                         dsa_strategy="none", eval_every=0, log_every=1)
    m = TrajectoryMatcher(net, cfg, trajs, images, labels, progress=False)
    m.syn_lr.data.fill_(-1e-3)  # negative for the first iterations ...
    step = m.step

    def step_and_recover():
        out = step()
        if m.iteration == 2:
            m.syn_lr.data.fill_(1e-2)  # ... then positive again, as a learned rate can become
        return out
    m.step = step_and_recover
    with caplog.at_level("WARNING", logger="tad_plugin.engine.matching"):
        result = m.run()
    assert result.syn_lr == pytest.approx(1e-2)
    assert sum("syn_lr is" in r.getMessage() for r in caplog.records) == 1  # warned once for the episode


def test_an_unstable_matching_loss_is_warned_about_once_per_episode(toy, caplog):
    net, trajs, images, labels, _, _ = toy
    cfg = MatchingConfig(iterations=6, syn_steps=2, expert_epochs=1, max_start_epoch=1, dsa_strategy="none",
                         eval_every=0, log_every=1)
    m = TrajectoryMatcher(net, cfg, trajs, images, labels, progress=False)
    step = m.step
    spikes = {2: 3.3, 3: 2.0, 5: 2.5}  # iteration -> logged loss: two episodes (2-3 and 5)

    def step_with_spikes():
        out = step()
        if m.iteration in spikes:
            m._losses[m.iteration - 1] = spikes[m.iteration]
        return out
    m.step = step_with_spikes
    with caplog.at_level("WARNING", logger="tad_plugin.engine.matching"):
        m.run()
    warned = [r.getMessage() for r in caplog.records if "matching loss is" in r.getMessage()]
    assert len(warned) == 2 and "3.3 at iteration 2" in warned[0] and "2.5 at iteration 5" in warned[1]
    assert [h["loss"] for h in m.history if h["iteration"] in spikes] == pytest.approx([3.3, 2.0, 2.5])


class _ScriptedEvaluator:
    """An evaluator whose accuracies follow a script (one per call), recording the images it was given."""

    def __init__(self, means):
        self.means, self.calls, self.seen = list(means), 0, []

    def run(self, images, labels, lr, init=None):
        from tad_plugin.engine.evaluate import EvalResult

        self.seen.append(images.detach().cpu().clone())
        mean = self.means[self.calls]
        self.calls += 1
        return EvalResult((mean, mean), 0.0), torch.zeros(2, 1)


def test_the_best_evaluation_s_set_is_kept_through_a_resume_and_the_distilled_file(toy, tmp_path):
    from tad_plugin.engine.pipeline import load_distilled, save_distilled

    net, trajs, images, labels, _, _ = toy
    cfg = MatchingConfig(iterations=6, syn_steps=2, expert_epochs=1, max_start_epoch=2, lr_img=10.0,
                         eval_every=2, checkpoint_every=2, log_every=2)
    ck = tmp_path / "ck.pt"
    ev = _ScriptedEvaluator([0.3, 0.6, 0.6, 0.4])  # iterations 0, 2, 4, 6: the best is 2 (ties keep the earlier)
    first = TrajectoryMatcher(net, cfg, trajs, images, labels, evaluator=ev, checkpoint=ck, progress=False)
    first.evaluate()
    first.step()
    first.step()
    first.evaluate()  # iteration 2, the best
    first.save(ck)
    first.step()  # then stopped as a killed run: the resumed run must take the best set from the checkpoint
    resumed = TrajectoryMatcher(net, cfg, trajs, images, labels, evaluator=ev, checkpoint=ck, progress=False)
    result = resumed.run()
    assert [h["iteration"] for h in result.history if "eval" in h] == [0, 2, 4, 6]
    assert result.best["iteration"] == 2 and result.best["mean"] == 0.6
    assert torch.equal(result.best_set["images"], ev.seen[1])  # the images evaluated at iteration 2
    assert not torch.equal(result.best_set["images"], result.images)  # not the final ones
    assert result.best_set["syn_lr"] == result.history[[h.get("iteration") for h in result.history].index(2)]["syn_lr"]
    best = result.best_result()
    assert torch.equal(best.images, ev.seen[1]) and best.ema_images is None
    save_distilled(result, tmp_path / "distilled.pt", Preprocessor("normalize", torch.zeros(1), torch.ones(1)))
    loaded, _ = load_distilled(tmp_path / "distilled.pt")
    assert torch.equal(loaded.best_result().images, ev.seen[1])


def test_a_run_without_evaluations_has_no_best_set(toy):
    net, trajs, images, labels, _, _ = toy
    cfg = MatchingConfig(iterations=2, syn_steps=2, expert_epochs=1, max_start_epoch=2, eval_every=0, log_every=1)
    result = TrajectoryMatcher(net, cfg, trajs, images, labels, progress=False).run()
    assert result.best_set is None
    with pytest.raises(ValueError, match="eval_every > 0"):
        result.best_result()


def test_an_ema_that_would_mostly_hold_the_initial_images_is_warned_about(toy, caplog):
    net, trajs, images, labels, _, _ = toy
    short = MatchingConfig(iterations=4, syn_steps=2, expert_epochs=1, max_start_epoch=2, ema_decay=0.9999,
                           eval_every=0, log_every=2)
    with caplog.at_level("WARNING", logger="tad_plugin.engine.matching"):
        TrajectoryMatcher(net, short, trajs, images, labels, progress=False)
    assert any("leaves 100% of the initial images" in r.message for r in caplog.records)
    caplog.clear()
    fast = MatchingConfig(**{**short.__dict__, "ema_decay": 0.5})  # 0.5 ** 4: 6% left
    with caplog.at_level("WARNING", logger="tad_plugin.engine.matching"):
        TrajectoryMatcher(net, fast, trajs, images, labels, progress=False)
    assert not any("initial images" in r.message for r in caplog.records)


def test_the_student_starts_from_aligned_memory_even_on_an_odd_trajectory_row(toy):
    """A trajectory row at an odd start epoch is not 16-byte aligned when P % 4 != 0 (the compiled inner step
    assumes it is: CUDA "misaligned address" on an H100); the matcher must hand the student its own copy."""
    net, trajs, images, labels, _, _ = toy
    traj = trajs[0]
    assert net.num_params % 4 != 0 and traj[1].data_ptr() % 16 != 0  # the hazard this test is about
    cfg = MatchingConfig(iterations=1, syn_steps=2, expert_epochs=1, min_start_epoch=1, max_start_epoch=2,
                         lr_teacher=0.05, dsa_strategy="none", eval_every=0)
    m = TrajectoryMatcher(net, cfg, [traj], images, labels, progress=False)
    seen = []
    inner = m._student_grad
    m._student_grad = lambda w, x, y: (seen.append(w), inner(w, x, y))[1]
    m.step()
    w0 = seen[0]
    assert w0.data_ptr() % 16 == 0
    assert w0.untyped_storage().data_ptr() != traj.untyped_storage().data_ptr()
    assert torch.equal(w0[0].detach(), traj[1])
