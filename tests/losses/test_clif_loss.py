"""CLIF's InfoNCE against an independent computation, and its DDP gather (2 gloo processes)."""

from __future__ import annotations

import math
import os
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from losses.clif import ContrastiveLanguageImageLoss, gather_with_grad, symmetric_info_nce


def reference_loss(
    text: torch.Tensor, image: torch.Tensor, scale: float, prompts: list[str] | None = None
) -> float:
    """Eq. (5) both ways, written out with python floats: mean over pairs of
    -log(exp(s cos(t_i, v_i)) / sum_j exp(s cos(t_i, v_j))), and the same from each image;
    with prompts, the mean of that over the pairs j sharing pair i's prompt (as positives)."""
    t = [[float(x) for x in row] for row in text.double()]
    v = [[float(x) for x in row] for row in image.double()]
    prompts = prompts or [str(i) for i in range(len(t))]

    def cos(a: list[float], b: list[float]) -> float:
        dot = sum(x * y for x, y in zip(a, b))
        return dot / math.sqrt(sum(x * x for x in a)) / math.sqrt(sum(y * y for y in b))

    n = len(t)
    total = 0.0
    for rows, cols in ((t, v), (v, t)):
        for i in range(n):
            logits = [scale * cos(rows[i], cols[j]) for j in range(n)]
            log_sum = math.log(sum(math.exp(x) for x in logits))
            same = [j for j in range(n) if prompts[j] == prompts[i]]
            total += sum(-(logits[j] - log_sum) for j in same) / len(same) / n
    return total / 2


@pytest.mark.parametrize("scale", [1.0, 14.3, 100.0])
def test_symmetric_info_nce_matches_the_formula(scale: float) -> None:
    generator = torch.Generator().manual_seed(0)
    text, image = torch.randn(5, 7, generator=generator), torch.randn(5, 7, generator=generator)
    got = float(symmetric_info_nce(text, image, scale))
    assert got == pytest.approx(reference_loss(text, image, scale), rel=1e-5)


def test_a_repeated_prompt_counts_as_a_positive_of_its_twin() -> None:
    # The same prompt gives the same text feature: the plain loss then equals the one that
    # spreads each row's target over the pairs sharing its prompt.
    generator = torch.Generator().manual_seed(3)
    prompts = ["a", "b", "a", "c", "b", "a"]
    by_prompt = {p: torch.randn(5, generator=generator) for p in "abc"}
    text = torch.stack([by_prompt[p] for p in prompts])
    image = torch.randn(6, 5, generator=generator)
    got = float(symmetric_info_nce(text, image, 9.0))
    assert got == pytest.approx(reference_loss(text, image, 9.0, prompts), rel=1e-5)


def test_matched_pairs_score_lower_than_shuffled_ones() -> None:
    features = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    matched = symmetric_info_nce(features, features + 0.01, 10.0)
    shuffled = symmetric_info_nce(features, features.roll(1, 0), 10.0)
    assert float(matched) < float(shuffled)


def test_each_ranks_rows_against_the_gathered_batch_average_to_the_whole_batch() -> None:
    generator = torch.Generator().manual_seed(2)
    text, image = torch.randn(6, 4, generator=generator), torch.randn(6, 4, generator=generator)
    halves = [
        symmetric_info_nce(text[s], image[s], 5.0, text, image, offset=s.start)
        for s in (slice(0, 3), slice(3, 6))
    ]
    assert float(sum(halves) / 2) == pytest.approx(float(symmetric_info_nce(text, image, 5.0)))


def test_a_bad_temperature_is_refused() -> None:
    with pytest.raises(ValueError, match="temperature must be > 0"):
        ContrastiveLanguageImageLoss(temperature=0.0)


# ----- DDP: two gloo processes equal one process holding both halves ---------------------------
def _features(weight: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    return torch.tanh(inputs @ weight)


def _rank_worker(rank: int, port: int, queue: mp.Queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        weight = torch.randn(4, 3, requires_grad=True)
        text_in, image_in = torch.randn(8, 4), torch.randn(8, 4)
        local = slice(4 * rank, 4 * rank + 4)

        def all_gather(tensor: torch.Tensor, sync_grads: bool) -> torch.Tensor:
            # What Lightning's DDP strategy does for all_gather(sync_grads=True).
            return torch.stack(dist.nn.functional.all_gather(tensor))

        module = SimpleNamespace(
            _trainer=SimpleNamespace(world_size=2, global_rank=rank), all_gather=all_gather
        )
        text = _features(weight, text_in[local])
        image = _features(weight, image_in[local]).detach()  # the image tower is frozen
        all_text, offset = gather_with_grad(module, text)
        all_image, _ = gather_with_grad(module, image)
        loss = symmetric_info_nce(text, image, 7.0, all_text, all_image, offset)
        loss.backward()
        grad = weight.grad.clone()
        dist.all_reduce(grad)  # DDP's gradient mean over the ranks
        loss_mean = loss.detach().clone()
        dist.all_reduce(loss_mean)
        queue.put((rank, float(loss_mean) / 2, (grad / 2).tolist()))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_holding_both_halves() -> None:
    torch.manual_seed(0)
    weight = torch.randn(4, 3, requires_grad=True)
    text_in, image_in = torch.randn(8, 4), torch.randn(8, 4)
    loss = symmetric_info_nce(_features(weight, text_in), _features(weight, image_in).detach(), 7.0)
    loss.backward()
    context = mp.get_context("spawn")
    queue = context.Queue()
    port = _free_port()
    workers = [context.Process(target=_rank_worker, args=(r, port, queue)) for r in range(2)]
    for worker in workers:
        worker.start()
    results = sorted(queue.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    for _, ddp_loss, ddp_grad in results:
        assert ddp_loss == pytest.approx(float(loss.detach()), rel=1e-6)
        assert torch.allclose(torch.tensor(ddp_grad), weight.grad, atol=1e-6, rtol=1e-5)
