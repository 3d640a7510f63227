"""The measurements behind choices the code comments name: each beside its alternative, one run.

python -m benchmarks.code_choices      # prints a line per choice; docs/performance.md quotes them
"""

import timeit

import torch
import torch.nn.functional as F

from mlp_lab import cluster
from mlp_lab.data import displacement_fields


def best_of(stmt, number: int) -> float:
    """The fastest of five repeats, in microseconds per call."""
    return min(timeit.repeat(stmt, number=number, repeat=5)) / number * 1e6


def main() -> None:
    torch.manual_seed(0)
    print(f"{cluster.machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    x, idx = torch.rand(55_000, 784), torch.randperm(55_000)[:256]
    select = best_of(lambda: x.index_select(0, idx), 2000)
    fancy = best_of(lambda: x[idx], 2000)
    print(f"batch gather (256 of 55,000 rows): index_select {select:.1f} µs, x[idx] {fancy:.1f} µs")
    noise, sigma = torch.rand(256, 2, 28, 28) * 2 - 1, 4.0
    radius = round(3 * sigma)
    kernel = torch.exp(-(torch.arange(-radius, radius + 1.0) ** 2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).view(1, 1, 1, -1)

    def convolved():
        f = F.pad(noise.view(-1, 1, 28, 28), (radius, radius, radius, radius), mode="replicate")
        return F.conv2d(F.conv2d(f, kernel), kernel.transpose(-1, -2))

    matrix = best_of(lambda: displacement_fields(noise, 34.0, sigma), 200)
    conv = best_of(convolved, 200)
    print(
        f"blur of 256 displacement fields: two matrix products {matrix:.0f} µs, "
        f"separable conv2d {conv:.0f} µs"
    )


if __name__ == "__main__":
    main()
