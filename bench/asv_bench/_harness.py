"""What the asv suites share: one benchmark per (case, implementation) of a harness kernel
area, the case's inputs built in setup and one warm-up call made there."""

import torch

from kernelsuite.harness.cases import get_cases

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def registry(kernel):
    """(cases by name, every implementation name) of the kernel's quick cases here."""
    cases = {c.name: c for c in get_cases([kernel], DEVICE, quick=True)}
    return cases, sorted({impl for c in cases.values() for impl in c.impls})


class CaseSuite:
    """Subclasses set CASES and params = (list(CASES), IMPLS)."""
    CASES: dict = {}
    param_names = ["case", "impl"]
    timeout = 600
    number = 1  # calls take milliseconds to a second: one per sample
    repeat = (3, 10, 20.0)

    def setup(self, case, impl):
        c = self.CASES[case]
        if impl not in c.impls:
            raise NotImplementedError(f"{impl} does not run {case} on {DEVICE}")
        inputs, work = c.make_inputs(DEVICE), c.impls[impl]
        self.case = c
        self.fn = lambda: work(inputs)
        self.run()  # warm-up: compilation, autotuning and loader start-up stay out

    def run(self):
        self.fn()
        if DEVICE == "cuda":  # the host clock must wait for the GPU
            torch.cuda.synchronize()
