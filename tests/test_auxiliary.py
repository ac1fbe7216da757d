"""The trainers' shared building blocks (methods/auxiliary.py, methods/loss.py) reproduce what each trainer computed
with its own copy before they were shared: the same rows in the same order, the same saved state."""

import json

import numpy as np
import pytest
import torch

from tvaccine.methods.auxiliary import SeededBatches, SideTerm, StepMeans, torch_order
from tvaccine.methods.loss import target_positions
from tvaccine.methods.tar import batch_rows


def stream_before_sharing(rows, size, calls, order):
    """The batch streams as each trainer wrote them before they were shared: walk ``order(epoch)`` (a permutation
    of the rows) ``size`` rows at a time, into the next epoch's order at the end. (batches, (epoch, pos) after each)"""
    epoch = pos = 0
    batches, states = [], []
    for _ in range(calls):
        out = []
        while len(out) < size:
            if pos >= len(rows):
                epoch, pos = epoch + 1, 0
            take = [int(i) for i in order(epoch)[pos : pos + size - len(out)]]
            out += [rows[i] for i in take]
            pos += len(take)
        batches.append(out)
        states.append((epoch, pos))
    return batches, states


def booster_lisa_stream(rows, size, seed, stream, calls):
    """Booster's and Lisa's order: NumPy, seeded by (seed, stream, epoch)."""
    return stream_before_sharing(rows, size, calls,
                                 lambda epoch: np.random.default_rng([seed, stream, epoch]).permutation(len(rows)))


def tvaccine_probe_stream(rows, size, seed, calls):
    """T-Vaccine's probe order: torch, seeded by the trainer's seed + 1 + epoch."""
    return stream_before_sharing(
        rows, size, calls,
        lambda epoch: torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed + 1 + epoch)).tolist())


def tar_batch(rows, size, index, seed):
    """TAR's batch_rows before the shared stream."""
    n, out = len(rows), []
    for k in range(index * size, (index + 1) * size):
        epoch, pos = divmod(k, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
        out.append(rows[order[pos]])
    return out


SHAPES = [(5, 2), (5, 5), (3, 7), (1, 3), (12, 4), (7, 1)]  # rows, batch size: partial, exact and multi-pass batches


@pytest.mark.parametrize("n,size", SHAPES)
@pytest.mark.parametrize("seed,stream", [(42, 0), (3, 1)])
def test_numpy_order_reproduces_booster_and_lisa_batches_and_state(n, size, seed, stream):
    rows = list(range(n))
    want, states = booster_lisa_stream(rows, size, seed, stream, 9)
    s = SeededBatches(rows, size, seed, stream=stream)
    for batch, state in zip(want, states):
        assert s.next_rows() == batch
        assert (s.epoch, s.pos) == state  # the checkpoint state is the one the old code saved


@pytest.mark.parametrize("n,size", SHAPES)
def test_torch_order_reproduces_the_tvaccine_probe_batches_and_state(n, size):
    rows = list(range(n))
    want, states = tvaccine_probe_stream(rows, size, 42, 9)
    s = SeededBatches(rows, size, 42 + 1, order=torch_order)
    epoch = pos = 0
    for batch, state in zip(want, states):
        got, epoch, pos = s.rows_from(epoch, pos)
        assert got == batch and (epoch, pos) == state


@pytest.mark.parametrize("n,size", SHAPES)
def test_tar_batches_are_the_same_and_are_the_stream_read_by_index(n, size):
    rows = list(range(n))
    stream = SeededBatches(rows, size, 43 * 1_000_003, order=torch_order)
    for i in range(9):
        assert batch_rows(rows, size, i, 43) == tar_batch(rows, size, i, 43) == stream.next_rows()


def test_state_dict_round_trip_resumes_the_same_sequence():
    rows = list(range(5))
    a = SeededBatches(rows, 3, seed=8, stream=2)
    for _ in range(3):
        a.next_rows()
    assert a.state_dict() == {"epoch": 1, "pos": 4}  # the keys checkpoints have held
    b = SeededBatches(rows, 3, seed=8, stream=2)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert [b.next_rows() for _ in range(4)] == [a.next_rows() for _ in range(4)]


def test_torch_order_has_one_stream_and_empty_rows_are_refused():
    with pytest.raises(ValueError, match="no streams"):
        SeededBatches([1, 2], 1, 0, stream=1, order=torch_order).next_rows()
    with pytest.raises(ValueError, match="at least one row"):
        SeededBatches([], 1, 0)


def test_target_positions_feed_the_head_the_positions_before_each_target_only():
    head = torch.nn.Linear(4, 6)
    hidden = torch.randn(2, 5, 4)
    labels = torch.tensor([[-100, -100, 3, 1, -100], [-100, 2, -100, -100, 5]])
    with target_positions(head, labels) as (keep, targets):
        logits = head(hidden)
    want_positions = [(0, 1), (0, 2), (1, 0), (1, 3)]  # position t predicts label t + 1
    assert keep.nonzero().tolist() == [list(p) for p in want_positions]
    assert targets.tolist() == [3, 1, 2, 5]
    torch.testing.assert_close(logits, head(torch.stack([hidden[b, t] for b, t in want_positions])))
    with pytest.raises(RuntimeError), target_positions(head, labels):
        raise RuntimeError
    assert head(hidden).shape == (2, 5, 6)  # the hook is gone, also after an exception


def test_step_means_average_each_metric_since_the_last_pop():
    m = StepMeans()
    m.add(a=0.1, b=torch.tensor(1.0))
    m.add(a=0.2, b=torch.tensor(2.5))
    assert m.pop() == {"a": (0.1 + 0.2) / 2, "b": 1.75}  # numbers in float64, tensors on their device
    m.add(b=torch.tensor(4.0, requires_grad=True) * 1)
    assert m.values["b"][0].grad_fn is None  # kept detached: no graph lives until the log
    assert m.pop() == {"b": 4.0} and m.pop() == {}


class _PlainLoss:
    """What SideTerm needs of a Trainer: a loss and the attributes of its accumulation rule."""

    loss_is_scaled_for_ga, model_accepts_loss_kwargs, compute_loss_func = None, True, None
    current_gradient_accumulation_steps = 4

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return torch.tensor(2.0)


class _WithSideTerm(SideTerm, _PlainLoss):
    pass


def test_side_term_changes_only_the_loss_inside_its_block():
    t = _WithSideTerm()
    with t.side_term(lambda loss, scale: loss + scale):
        assert t.compute_loss(None, {}, num_items_in_batch=10).item() == 2.25  # loss normalised by 10: 1/4 per step
        assert t.compute_loss(None, {}).item() == 3.0  # the Trainer divides by the accumulation steps itself
        assert t.compute_loss(None, {}, return_outputs=True).item() == 2.0  # evaluation: the plain loss
    assert t.compute_loss(None, {}).item() == 2.0
    with pytest.raises(RuntimeError), t.side_term(lambda loss, scale: loss + 1):
        raise RuntimeError
    assert t.compute_loss(None, {}).item() == 2.0  # cleared after an exception too
    with t.side_term(None):
        assert t.compute_loss(None, {}).item() == 2.0
