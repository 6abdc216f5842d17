"""FLOPs and HBM bytes of one execution of a compiled program, from its optimized HLO.

XLA's ``HloCostAnalysis`` counts a ``while`` body once, so a 24-layer scan shows about a
fourteenth of a train step's FLOPs.  Here each loop body is analysed as a module of its own
and scaled by its ``known_trip_count`` (XLA writes it into the optimized loop's backend
config):

    cost(C) = hca(C) - sum_w hca(body_w) + sum_w trips_w * cost(body_w)

for the loops ``w`` that ``C`` runs (directly or through calls).  ``hca`` is XLA's own
analysis, run through the CPU client on the text of the program compiled for any target
(a deviceless GPU executable's ``cost_analysis()`` is None).  Pallas kernels are opaque custom
calls to it (no FLOPs, operand and result bytes); they are counted by the ``CostEstimate``
each kernel declared when it was traced (``record_kernel_cost``), matched by the name it was
recorded under, whatever it is; a Pallas call with no recorded cost is listed in
``uncosted_kernels`` (counted by its operands, no FLOPs) instead of passing silently.
cuBLAS matmul calls (a GPU program's matmuls where they are no Triton GEMM fusions) are
counted by the call's dot dimensions.

The FLOPs are that sum.  The HBM bytes are counted per instruction where the hardware
moves them (``_Module.traffic``): XLA's analysis counts every operand and result whole,
wherever it lives, which on libtpu's HLO counts buffers held in on-chip memory, whole
stacked buffers that a nested fusion only slices, and buffers updated in place (4,106 GB for
the 1b v6e step where these rules give 3,022: ``docs/step-bytes.md``).  Each instruction's
bytes, times how often the loops around it run, is a row; the step's bytes are their sum,
and ``hbm_top`` lists the largest rows: fusions, kernels and copies, each named by its kind
and the JAX operation it came from.  XLA's own figure stays in the result as
``xla bytes accessed``.
"""

from __future__ import annotations

import re
from typing import Any

KEYS = ("flops", "transcendentals", "bytes accessed")
_HEADER = re.compile(r"^(ENTRY )?%?([\w.\-]+) \(.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = ")
_SHAPE = re.compile(r"\b(pred|s4|s8|s16|s32|s64|u4|u8|u16|u32|u64|f8e4m3fn|f8e5m2|bf16|f16|"
                    r"f32|f64|c64|c128)\[([\d,]*)\]")
_BITS = {"pred": 8, "s4": 4, "u4": 4, "s8": 8, "u8": 8, "f8e4m3fn": 8, "f8e5m2": 8, "s16": 16,
         "u16": 16, "bf16": 16, "f16": 16, "s32": 32, "u32": 32, "f32": 32, "s64": 64,
         "u64": 64, "f64": 64, "c64": 64, "c128": 128}
_HLO_DTYPE = {"bfloat16": "bf16", "float16": "f16", "float32": "f32", "float64": "f64",
              "int32": "s32", "int8": "s8", "uint32": "u32", "bool": "pred"}
_NOT_KERNELS = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while",
                "call", "conditional", "after-all", "partition-id", "replica-id",
                "opt-barrier", "async-done", "copy-done", "slice-done", "fusion-done"}
# the custom calls a Pallas kernel compiles to (Mosaic on TPU, Triton on GPU)
_PALLAS_TARGETS = ('"tpu_custom_call"', '"__gpu$xla.gpu.triton"')

# (pallas_call name, result shapes) -> (flops, transcendentals, bytes), from trace time
_KERNEL_COSTS: dict[tuple[str, str], tuple[float, float, float]] = {}


def shape_key(shapes) -> str:
    """HLO's spelling of result shapes (no layouts), e.g. ``(bf16[8,6,2048,256], f32[1])``."""
    parts = [f"{_HLO_DTYPE.get(str(s.dtype), str(s.dtype))}[{','.join(map(str, s.shape))}]"
             for s in shapes]
    return parts[0] if len(parts) == 1 else "(" + ", ".join(parts) + ")"


def record_kernel_cost(name: str, out_shapes, cost) -> None:
    """Remember a Pallas kernel's declared cost for the analysis of programs that call it."""
    _KERNEL_COSTS[(name, shape_key(out_shapes))] = (
        float(cost.flops), float(cost.transcendentals), float(cost.bytes_accessed))


_ARRAY = re.compile(_SHAPE.pattern + r"(\{[^{}]*\})?")


def _nbytes(type_text: str) -> int:
    """Bytes of every array in a (tuple) type."""
    total = 0
    for dtype, dims, _ in _ARRAY.findall(type_text):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * _BITS[dtype] // 8
    return total


def _hbm_bytes(type_text: str) -> int:
    """Bytes of the arrays of a type that live in HBM: memory space 0, i.e. no ``S(n)``
    with n > 0 in the layout (libtpu's on-chip memories: ``S(1)`` the alternate memory its
    memory-space assignment prefetches into, ``S(2)`` and up scalar and sync memories)."""
    total = 0
    for dtype, dims, layout in _ARRAY.findall(type_text):
        space = re.search(r"S\((\d+)\)", layout)
        if space and int(space.group(1)):
            continue
        total += _nbytes(f"{dtype}[{dims}]")
    return total


def _elements(type_text: str) -> list[str]:
    """The top-level elements of a tuple type (the type itself if it is no tuple)."""
    text = type_text.strip()
    if not text.startswith("("):
        return [text]
    parts, depth, start = [], 0, 1
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1, "{": 1, "}": -1, "[": 1, "]": -1}.get(ch, 0)
        if (ch == "," and depth == 1) or (depth == 0 and ch == ")"):
            parts.append(re.sub(r"/\*index=\d+\*/", "", text[start:i]).strip())
            start = i + 1
            if depth == 0:
                break
    return [p for p in parts if p]


def _operands(line: str) -> list[str]:
    """The names an instruction line reads (its operand list, after the result type and
    the opcode)."""
    _, rest = _split_type(line.split("=", 1)[1].strip())
    start = rest.find("(")
    if start < 0:
        return []
    depth = 0
    for i in range(start, len(rest)):
        depth += {"(": 1, ")": -1}.get(rest[i], 0)
        if depth == 0:
            return re.findall(r"%([\w.\-]+)", rest[start:i + 1])
    return re.findall(r"%([\w.\-]+)", rest[start:])


def _split_type(rest: str) -> tuple[str, str]:
    """``rest`` after ``name = ``: (result type, the remainder starting at the opcode)."""
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if depth == 0:
                return rest[:i + 1], rest[i + 1:].lstrip()
    head, _, tail = rest.partition(" ")
    return head, tail


class _Module:
    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.comps: dict[str, tuple[int, int]] = {}
        self.order: list[str] = []
        self.entry = None
        cur = None
        for i, line in enumerate(self.lines):
            m = _HEADER.match(line)
            if m and cur is None:
                cur = m.group(2)
                self.comps[cur] = (i, i)
                self.order.append(cur)
                if m.group(1):
                    self.entry = cur
            elif line.strip() == "}" and cur is not None:
                self.comps[cur] = (self.comps[cur][0], i)
                cur = None
        self.instrs = {c: list(self._parse(c)) for c in self.order}
        self._user_maps: dict[str, dict[str, list]] = {}

    def _parse(self, comp):
        a, b = self.comps[comp]
        for line in self.lines[a + 1:b]:
            m = _INSTR.match(line)
            if not m:
                continue
            rtype, rest = _split_type(line[m.end():])
            op = re.match(r"[\w\-]+", rest)
            yield m.group(1), rtype, (op.group(0) if op else ""), line

    def _users(self, comp: str) -> dict[str, list[tuple[str, str, str, str]]]:
        """name -> the instructions of ``comp`` that read it."""
        if comp not in self._user_maps:
            users: dict[str, list[tuple[str, str, str, str]]] = {}
            for instr in self.instrs[comp]:
                for a in _operands(instr[3]):
                    users.setdefault(a, []).append(instr)
            self._user_maps[comp] = users
        return self._user_maps[comp]

    def _root(self, comp: str) -> str | None:
        return next((n for n, _, _, text in self.instrs.get(comp, [])
                     if text.lstrip().startswith("ROOT")), None)

    def _param(self, comp: str, index: int) -> str | None:
        return next((n for n, _, op, text in self.instrs.get(comp, [])
                     if op == "parameter" and re.search(rf"parameter\({index}\)", text)), None)

    def _read(self, comp: str, name: str, full: int, depth: int = 0) -> int:
        """Bytes of ``name`` (a fused computation's parameter, or a bitcast of one) that the
        fused code reads: the slices where it only slices it (also inside a nested fusion,
        as libtpu nests them), nothing where it is the buffer a dynamic-update-slice writes
        in place, else all of it."""
        if name == self._root(comp):
            return full  # passed on whole to the instruction around the fusion
        total = 0
        for uname, utype, uop, utext in self._users(comp).get(name, []):
            args = _operands(utext)
            if uop in ("dynamic-slice", "slice", "gather") and args[0] == name:
                total += _nbytes(utype)  # what it takes of the operand
            elif uop == "dynamic-update-slice" and args[0] == name and name not in args[1:]:
                continue  # the buffer written in place: only its update moves
            elif uop == "bitcast" and depth < 8:
                total += self._read(comp, uname, full, depth + 1)
            elif uop == "fusion" and depth < 8:
                nested = re.search(r"calls=%?([\w.\-]+)", utext)
                for j in (j for j, a in enumerate(args) if a == name):
                    inner = self._param(nested.group(1), j) if nested else None
                    total += (full if inner is None
                              else self._read(nested.group(1), inner, full, depth + 1))
            else:
                return full
        return min(total, full)

    def _written(self, comp: str, name: str, depth: int = 0) -> int:
        """HBM bytes a fused computation's value ``name`` writes as (part of) the fusion's
        result: a dynamic-update-slice of a parameter's buffer (in place) writes its
        update; a tuple, each element."""
        instr = next((i for i in self.instrs[comp] if i[0] == name), None)
        if instr is None:
            return 0
        _, rtype, op, text = instr
        args = _operands(text)
        if op == "tuple" and depth < 8:
            return sum(self._written(comp, a, depth + 1) for a in args)
        if op == "bitcast" and depth < 8:
            return self._written(comp, args[0], depth + 1)
        if op == "dynamic-update-slice" and len(args) > 1 and self._is_param(comp, args[0]):
            return _nbytes(next((t for n, t, _, _ in self.instrs[comp] if n == args[1]), ""))
        return _nbytes(rtype)

    def _is_param(self, comp: str, name: str, depth: int = 0) -> bool:
        instr = next((i for i in self.instrs[comp] if i[0] == name), None)
        if instr is None:
            return False
        if instr[2] == "bitcast" and depth < 8:
            return self._is_param(comp, _operands(instr[3])[0], depth + 1)
        return instr[2] == "parameter"

    def traffic(self, line: str, rtype: str, operand_types: list[str]) -> int:
        """HBM bytes of one instruction: operands read plus results written, counting only
        buffers in HBM (memory space 0: libtpu places buffers in on-chip memory, ``S(1)``
        and up in their layouts, whose reads and writes are no HBM traffic) and what the
        hardware moves of them:

        * a fusion reads of an operand only the slices it takes (directly, through bitcasts
          or inside a nested fusion) and writes of a buffer it updates in place
          (dynamic-update-slice of its parameter) only the update;
        * ``copy-start`` moves its source once, counted where it is in HBM (read) and
          where its destination is (written); ``slice-start`` moves its slice;
          ``fusion-start`` (jax 0.12's asynchronous fusions on GPU) is its fusion; their
          ``-done`` halves move nothing;
        * a dynamic-slice reads its slice, a gather the elements it gathers, a
          dynamic-update-slice writes its update; ``AllocateBuffer`` moves nothing."""
        op = re.match(r"[\w\-]+", _split_type(line.split("=", 1)[1].strip())[1])
        op = op.group(0) if op else ""
        if op in ("copy-start", "slice-start"):
            parts = _elements(rtype)
            dst = parts[1] if len(parts) > 1 else rtype
            src = operand_types[0] if operand_types else ""
            moved = _nbytes(dst)
            return (moved if _hbm_bytes(src) else 0) + _hbm_bytes(dst)
        if op == "custom-call" and 'custom_call_target="AllocateBuffer"' in line:
            return 0  # an uninitialised buffer: nothing moves
        if op == "gather":  # the gathered elements, not the whole operand
            src = operand_types[0] if operand_types else ""
            return ((_nbytes(rtype) if _hbm_bytes(src) else 0) + _hbm_bytes(rtype)
                    + sum(_hbm_bytes(t) for t in operand_types[1:]))
        if op == "dynamic-slice":
            src = operand_types[0] if operand_types else ""
            return (_nbytes(rtype) if _hbm_bytes(src) else 0) + _hbm_bytes(rtype)
        if op == "dynamic-update-slice" and len(operand_types) > 1:
            update = operand_types[1]
            return _hbm_bytes(update) + (_nbytes(update) if _hbm_bytes(rtype) else 0)
        if op == "fusion-start":  # an async fusion: ((operands), result, context)
            parts = _elements(rtype)
            rtype, op = (parts[1] if len(parts) > 1 else rtype), "fusion"
        sizes = [_hbm_bytes(t) for t in operand_types]
        out = _hbm_bytes(rtype)
        called = re.search(r"calls=%?([\w.\-]+)", line)
        if op != "fusion" or not called or called.group(1) not in self.instrs:
            return out + sum(sizes)
        comp = called.group(1)
        for index, size in enumerate(sizes):
            name = self._param(comp, index) if size else None
            if name is not None:
                sizes[index] = self._read(comp, name, size)
        root = self._root(comp)
        if out and root is not None:
            out = min(out, self._written(comp, root))
        return out + sum(sizes)

    def _define(self, comp: str, name: str) -> str:
        return next((t for n, _, _, t in self.instrs.get(comp, []) if n == name), "")

    def _constant(self, comp: str, name: str, depth: int = 4) -> int | None:
        """The integer value of ``name`` if it is a scalar constant (through copies)."""
        text = self._define(comp, name)
        m = re.search(r" constant\((-?\d+)\)", text)
        if m:
            return int(m.group(1))
        m = re.search(r" (?:copy|bitcast|convert)\(%?([\w.\-]+)\)", text)
        return self._constant(comp, m.group(1), depth - 1) if m and depth else None

    def _counted(self, comp: str, line: str) -> int | None:
        """Trip count of a ``while`` without ``known_trip_count`` (libtpu's HLO): a
        condition ``counter < N`` on a tuple element that starts at a constant ``c`` gives
        ``N - c`` (the loops JAX emits step their counter by one)."""
        cond = re.search(r"condition=%?([\w.\-]+)", line)
        init = re.search(r" while\(%?([\w.\-]+)\)", line)
        if not cond or not init or cond.group(1) not in self.instrs:
            return None
        root = next((t for _, _, _, t in self.instrs[cond.group(1)]
                     if t.lstrip().startswith("ROOT")), "")
        m = re.search(r"compare\(%?([\w.\-]+), %?([\w.\-]+)\), direction=LT", root)
        wrapped = re.search(r"fusion\(%?([\w.\-]+), %?([\w.\-]+)\).*calls=%?([\w.\-]+)",
                            root)
        if not m and wrapped and wrapped.group(3) in self.instrs:  # compare in a fusion
            inner = next((t for _, _, _, t in self.instrs[wrapped.group(3)]
                          if t.lstrip().startswith("ROOT")), "")
            if re.search(r"compare\(%?[\w.\-]*param_0[\w.\-]*, %?[\w.\-]*param_1"
                         r"[\w.\-]*\), direction=LT", inner):
                m = wrapped
        if not m:
            return None
        index = re.search(r"index=(\d+)", self._define(cond.group(1), m.group(1)))
        bound = self._constant(cond.group(1), m.group(2))
        tup = re.search(r" tuple\(([^)]*)\)", self._define(comp, init.group(1)))
        if index is None or bound is None or tup is None:
            return None
        parts = [p.strip().lstrip("%") for p in tup.group(1).split(",")]
        parts = [re.sub(r"^/\*index=\d+\*/%?", "", p) for p in parts]
        k = int(index.group(1))
        start = self._constant(comp, parts[k]) if k < len(parts) else None
        return bound - start if start is not None and bound >= start else None

    def loops(self, comp):
        """(body, trips) of the loops ``comp`` runs, and the computations it calls."""
        whiles, calls = [], []
        for _, _, op, line in self.instrs[comp]:
            if op == "while":
                body = re.search(r"body=%?([\w.\-]+)", line).group(1)
                n = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', line)
                whiles.append((body, int(n.group(1)) if n else self._counted(comp, line)))
            elif op in ("call", "conditional", "async-start"):
                for grp in re.findall(r"(?:to_apply|calls|branch_computations)="
                                      r"\{?([%\w.\-, ]+)\}?", line):
                    calls += [n.strip().lstrip("%") for n in grp.split(",") if n.strip()]
        return whiles, [c for c in calls if c in self.comps]


def _kernel_cost(line: str, rtype: str) -> tuple[float, float, float] | None:
    """The declared cost of the kernel ``line`` calls: found by the names kernels were
    recorded under (``record_kernel_cost``, at trace time), the longest that occurs in the
    line as a whole word, and the call's result shapes."""
    names = sorted({name for name, _ in _KERNEL_COSTS}, key=len, reverse=True)
    if not names:
        return None
    m = re.search(r"\b(" + "|".join(map(re.escape, names)) + r")\b", line)
    if not m:
        return None
    return _KERNEL_COSTS.get((m.group(1), re.sub(r"\{[^{}]*\}", "", rtype)))


def _dims(type_text: str) -> list[int]:
    m = _SHAPE.search(type_text)
    return [int(d) for d in m.group(2).split(",") if d] if m else []


def _library_gemm(line: str, rtype: str, lhs_type: str) -> tuple[float, int] | None:
    """(FLOPs, bytes of the product) of a cuBLAS matmul call (``__cublas$gemm``,
    ``__cublas$lt$matmul``: what a GPU program calls where it has no Triton GEMM fusion),
    which the CPU client's analysis counts as nothing: 2 x the product's elements x the
    contracted size, read from the call's ``dot_dimension_numbers``.  The product is the
    result tuple's first element; the rest is cuBLAS's scratch workspace, not HBM traffic
    of the step's data."""
    if '"__cublas$' not in line:
        return None
    contracting = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', line)
    if not contracting:
        return None
    lhs = _dims(lhs_type)
    k = 1
    for d in re.findall(r"\d+", contracting.group(1)):
        k *= lhs[int(d)]
    product = rtype.lstrip("(").split(", ")[0] if rtype.startswith("(") else rtype
    n = 1
    for d in _dims(product):
        n *= d
    return 2.0 * n * k, _nbytes(product)


def _inner_gemm_flops(mod: _Module, line: str) -> float:
    """FLOPs of the cuBLAS matmuls inside the computation a custom fusion calls, plus one per
    custom call there (cancelling XLA's -1 "unknown")."""
    called = re.search(r"calls=%?([\w.\-]+)", line)
    body = mod.instrs.get(called.group(1), []) if called else []
    shapes = {n: t for n, t, _, _ in body}
    flops = 0.0
    for _, rtype, op, text in body:
        if op != "custom-call":
            continue
        flops += 1
        args = _operands(text)
        gemm = _library_gemm(text, rtype, shapes.get(args[0], "") if args else "")
        flops += gemm[0] if gemm else 0.0
    return flops


def analyse(text: str) -> dict[str, Any]:
    """Per-execution cost of the optimized HLO module ``text``: ``flops``,
    ``transcendentals``, ``bytes accessed`` (loop bodies times their trip counts, Pallas
    kernels by their declared cost), ``loops`` and ``hbm_top`` (see the module doc)."""
    import jax
    import jaxlib._hlo as hlo
    from jax._src.lib import _jax

    mod = _Module(text)
    client = jax.devices("cpu")[0].client
    cache: dict[str, dict[str, float]] = {}

    def hca(root):
        if root not in cache:
            body = []
            for c in mod.order:
                a, b = mod.comps[c]
                head = mod.lines[a].removeprefix("ENTRY ")
                body += [("ENTRY " + head) if c == root else head] + mod.lines[a + 1:b + 1]
                if c == root:
                    break
            sub = re.sub(r",? ?stack_frame_id=\d+", "", "\n".join(["HloModule sub", ""] + body))
            d = _jax.hlo_module_cost_analysis(client, hlo.hlo_module_from_text(sub))
            cache[root] = {k: float(d.get(k, 0.0)) for k in KEYS}
        return cache[root]

    unknown, loops, rows, uncosted = [], [], [], []

    def walk(comp, times):
        """(cost of comp's own instructions and calls minus its loop bodies, loops)."""
        own = dict.fromkeys(KEYS, 0.0)
        whiles, calls = mod.loops(comp)
        shapes = {n: t for n, t, _, _ in mod.instrs[comp]}
        for name, rtype, op, line in mod.instrs[comp]:
            if op in _NOT_KERNELS:
                continue
            operands = _operands(line)
            nbytes = mod.traffic(line, rtype, [shapes.get(o, "") for o in operands])
            if op == "custom-call":
                # XLA's analysis knows no custom call: it counts each as -1 FLOPs and -1
                # bytes (HandleCustomCall's "unknown").  Cancel that, then count the call by
                # the kernel's declared cost, a cuBLAS matmul by its dimensions, anything
                # else by its operands read and results written (no FLOPs).
                own["flops"] += 1
                own["bytes accessed"] += 1
                kernel = _kernel_cost(line, rtype)
                gemm = None if kernel else _library_gemm(
                    line, rtype, shapes.get(operands[0], "") if operands else "")
                if kernel is None and any(t in line for t in _PALLAS_TARGETS):
                    uncosted.append(name)  # a Pallas kernel traced elsewhere, or unnamed
                if kernel is not None:
                    own["flops"] += kernel[0]
                    own["transcendentals"] += kernel[1]
                    nbytes = kernel[2]
                elif gemm is not None:  # its scratch workspace is no step data
                    own["flops"] += gemm[0]
                    nbytes = nbytes - _nbytes(rtype) + gemm[1]
                own["bytes accessed"] += nbytes
            elif op == "fusion" and '"__custom_fusion"' in line:
                # a custom fusion around library calls (jax 0.12's dynamic_slice_fusion: a
                # cuBLAS matmul reading a slice of a loop's operand in place): XLA's analysis
                # counts each inner call as -1 FLOPs; count the matmuls by their dimensions
                own["flops"] += _inner_gemm_flops(mod, line)
            src = re.search(r'op_name="([^"]*)"', line)
            kind = re.search(r"kind=(\w+)|custom_call_target=\"([^\"]+)\"", line)
            rows.append({"instruction": name, "op": op,
                         "kind": next((g for g in (kind.groups() if kind else ()) if g), op),
                         "source": src.group(1)[-120:] if src else "",
                         "bytes": nbytes, "executions": times, "total_bytes": nbytes * times})
        for callee in calls:
            sub_own, sub_whiles = walk(callee, times)
            for k in KEYS:
                own[k] += sub_own[k]
            whiles = whiles + sub_whiles
        return own, whiles

    def cost(comp, times):
        own, whiles = walk(comp, times)
        total = {k: hca(comp)[k] + own[k] for k in KEYS}
        for body, n in whiles:
            loops.append({"body": body, "trips": n})
            if n is None:
                unknown.append(body)
                n = 1
            inner = cost(body, times * n)
            for k in KEYS:
                total[k] += n * inner[k] - hca(body)[k]
        return total

    result = cost(mod.entry, 1)
    # XLA's analysis counts every operand and result whole, wherever it lives; the HBM
    # bytes are the rows' (``_Module.traffic``), each times the trips of its loops.
    result["xla bytes accessed"] = result["bytes accessed"]
    result["bytes accessed"] = float(sum(r["total_bytes"] for r in rows))
    rows.sort(key=lambda r: -r["total_bytes"])
    return {**result, "loops": loops, "unknown_trip_counts": unknown, "rows": rows,
            "uncosted_kernels": uncosted}
