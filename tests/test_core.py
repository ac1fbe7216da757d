"""The pure core: perturbation size, hook scoping, importance and sampling."""

import pytest
import torch

from tvaccine.importance import grad_norms, importance_probs, sample_layers, top_layers
from tvaccine.layers import find_decoder_layers
from tvaccine.perturb import add_to_outputs, capture_outputs, worst_case_perturbation

from conftest import tiny_llama, with_lora


@pytest.mark.parametrize("rho", [0.5, 3.0])
def test_perturbation_has_joint_norm_rho_and_gradient_direction(rho):
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(2, 5, 8, generator=g) * s for s in (0.1, 1.0, 10.0)]
    eps = worst_case_perturbation(grads, rho)
    joint = torch.sqrt(sum(e.pow(2).sum() for e in eps))
    assert joint.item() == pytest.approx(rho, rel=1e-5)
    for e, gr in zip(eps, grads):  # same direction per layer: ε_l = c · g_l with one shared c > 0
        assert torch.allclose(e / gr, (eps[0] / grads[0]).flatten()[0].expand_as(e), rtol=1e-4)


def test_zero_gradients_give_zero_perturbation():
    eps = worst_case_perturbation([torch.zeros(3), torch.zeros(2)], 3.0)
    assert all(torch.count_nonzero(e) == 0 for e in eps)


def _hook_count(layers):
    return sum(len(a._forward_hooks) for a in layers.attentions)


def test_hooks_are_removed_on_exit_and_on_exception():
    model = with_lora(tiny_llama())
    layers = find_decoder_layers(model)
    ids = torch.tensor([[3, 4, 5]])
    with capture_outputs(layers.attentions) as captured:
        assert _hook_count(layers) == len(layers)
        model(ids)
    assert _hook_count(layers) == 0 and all(c is not None for c in captured)
    with pytest.raises(RuntimeError, match="boom"):
        with add_to_outputs(layers.attentions, [torch.zeros(1)] * len(layers)):
            raise RuntimeError("boom")
    assert _hook_count(layers) == 0


def test_captured_gradients_match_retain_grad_reference():
    """∂L/∂a_l through the capture hooks equals the gradient autograd gives the same tensors directly."""
    from tvaccine.importance import grad_norms

    model = with_lora(tiny_llama())
    layers = find_decoder_layers(model)
    ids = torch.tensor([[3, 4, 5, 6, 7, 8]])
    with capture_outputs(layers.attentions) as captured:
        loss = model(ids, labels=ids).loss
    grads = torch.autograd.grad(loss, list(captured), retain_graph=True)
    for a in captured:
        a.retain_grad()
    loss.backward()
    assert torch.allclose(grad_norms(grads), torch.stack([a.grad.norm() for a in captured]))


def test_capture_works_when_everything_below_is_frozen():
    """Layer 0 with frozen LoRA and embeddings without grad: its output still gets a gradient (a leaf stands in)."""
    model = with_lora(tiny_llama())
    for p in model.parameters():
        p.requires_grad_(False)
    layers = find_decoder_layers(model)
    ids = torch.tensor([[3, 4, 5, 6]])
    with capture_outputs(layers.attentions) as captured:
        loss = model(ids, labels=ids).loss
    grads = torch.autograd.grad(loss, list(captured))
    assert all(g.abs().sum() > 0 for g in grads)


def test_importance_probabilities():
    p = importance_probs(torch.tensor([1.0, 3.0, 0.0, 4.0]))
    assert torch.allclose(p, torch.tensor([0.125, 0.375, 0.0, 0.5]))
    assert torch.allclose(importance_probs(torch.zeros(4)), torch.full((4,), 0.25))
    with pytest.raises(FloatingPointError):
        importance_probs(torch.tensor([1.0, float("nan")]))
    assert grad_norms([torch.ones(4), torch.zeros(2)]).tolist() == [2.0, 0.0]


def test_single_draws_follow_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    for _ in range(20000):
        counts[sample_layers(probs, 1, g)[0]] += 1
    assert torch.allclose(counts / counts.sum(), probs, atol=0.015)


def test_draws_without_replacement_never_repeat_and_favour_important_layers():
    probs = importance_probs(torch.tensor([8.0, 4.0, 2.0, 1.0, 1.0, 1.0]))
    g = torch.Generator().manual_seed(1)
    inclusion = torch.zeros(6)
    for _ in range(5000):
        draw = sample_layers(probs, 3, g)
        assert len(set(draw)) == 3 and draw == sorted(draw)
        inclusion[draw] += 1
    assert inclusion[0] > inclusion[1] > inclusion[2] > inclusion[3:].max()
    assert sample_layers(probs, 6, g) == list(range(6))
    # zero-importance layers stay drawable when S exceeds the non-zero count
    assert len(sample_layers(torch.tensor([1.0, 0.0, 0.0]), 3, g)) == 3


def test_sampling_is_reproducible_from_the_seed():
    probs = torch.full((10,), 0.1)
    a = [sample_layers(probs, 4, torch.Generator().manual_seed(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    assert top_layers(torch.tensor([0.1, 0.5, 0.2, 0.2]), 2) in ([1, 2], [1, 3])


def test_capture_keeps_the_first_output_of_a_module_run_again_in_scope():
    """A checkpointed layer recomputed in backward runs its hook again: the list must keep the forward's output
    (the one the loss depends on), not the recomputed one, whose graph would otherwise stay alive."""
    model = with_lora(tiny_llama())
    layers = find_decoder_layers(model)
    ids = torch.tensor([[3, 4, 5, 6]])
    with capture_outputs(layers.attentions) as captured:
        model(ids)
        first = list(captured)
        model(ids)  # a second run in scope, as a recomputation is
        assert all(a is b for a, b in zip(captured, first))
