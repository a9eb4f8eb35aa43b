"""What a benchmark case and a kernel area are (docs/ARCHITECTURE.md, "Benchmarks").

A case is one problem (kernel, parameters, how to build inputs, FLOPs and bytes, the
devices it runs on, how to check an output) plus the implementations that solve it: each
plays a role, ours (the project's kernels), the reference (the plain PyTorch or Python
version the numerics are checked against) or an alternative (the best other code
installed, e.g. a torch SDPA backend); speedups are reported against the reference and
the fastest alternative. An area is one module of kernelsuite/harness/cases/ that builds
its cases at each size in SIZES: "quick" (the default subset), "all" (the full sweep) and
"tiny" (the same code at toy shapes, so that a dry run on a CPU, Triton under its
interpreter, goes through every step a GPU run takes in seconds).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

SIZES = ("tiny", "quick", "all")
OURS, REFERENCE, ALTERNATIVE = "ours", "reference", "alternative"
ROLES = (OURS, REFERENCE, ALTERNATIVE)


@dataclass
class Case:
    kernel: str
    name: str
    params: dict
    flops: float
    bytes: float
    make_inputs: Callable[[str], Any]  # device -> inputs (fresh random data)
    # implementation name -> fn(inputs) doing the work once (forward, or forward + backward)
    impls: dict[str, Callable[[Any], Any]] = field(default_factory=dict)
    # implementation name -> its role (OURS, REFERENCE, ALTERNATIVE): the area's
    # Area.roles, filled in by cases.get_cases (the reference's name, also where a shape
    # is too large for the reference to run)
    roles: dict[str, str] = field(default_factory=dict)
    tokens: int = 0  # tokens per call, for data cases (reported as Mtok/s)
    host_bytes: float = 0.0  # bytes a call must move from host to device (a GPU's loader)
    devices: tuple = ("cpu", "cuda")  # device types the case runs on
    # truth(inputs) -> the exact answer for those inputs (float64 reference, or the exact
    # reference of an integer kernel); error(output, truth) -> its max error (0 = exact).
    # None: the case has no checkable answer. Impls in `unchecked` are not compared (e.g. a
    # random sampler that draws other batches).
    truth: Callable[[Any], Any] | None = None
    error: Callable[[Any, Any], float] | None = None
    unchecked: tuple = ()
    # details(inputs) -> facts about the problem recorded beside each measurement (e.g. a
    # packing's bins and efficiency)
    details: Callable[[Any], dict] | None = None

    @property
    def id(self) -> str:
        return f"{self.kernel}/{self.name}"

    @property
    def reference(self) -> str | None:
        """The implementation whose time speedups are taken against (vs_reference)."""
        return next((i for i, role in self.roles.items() if role == REFERENCE), None)

    def role(self, impl: str) -> str:
        return self.roles[impl]


@dataclass(frozen=True)
class Area:
    """A kernel area: its name (= its module's name under harness/cases/), what it
    measures (one line, for `kernelsuite bench --list` and the README), and
    - cases(device, size) -> list[Case];
    - impls: device type -> every implementation name its cases may have there, whatever
      is installed (asv's parameters must not depend on the machine that discovers them);
    - roles: implementation name -> OURS, REFERENCE or ALTERNATIVE;
    - notes(device) -> lines printed under the benchmark table (e.g. compile times);
    - teardown(): run after a benchmark process is done with the area's cases (e.g. stop
      loader threads before the interpreter exits)."""
    name: str
    summary: str
    cases: Callable[[str, str], list[Case]]
    impls: dict[str, list[str]]
    roles: dict[str, str]
    notes: Callable[[str], list[str]] | None = None
    teardown: Callable[[], None] | None = None

    def __post_init__(self):
        names = {i for names in self.impls.values() for i in names}
        if names != set(self.roles) or not set(self.roles.values()) <= set(ROLES):
            raise ValueError(f"area {self.name}: roles {self.roles} must give each of "
                             f"{sorted(names)} one of {ROLES}")
