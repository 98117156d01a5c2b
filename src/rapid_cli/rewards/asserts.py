"""Dataset tests written as asserts -> recorded checks (inputs, expected value, comparison rule).

A test like `assert candidate(3.5) == 0.5` cannot run where the candidate runs: the candidate could
read the expected value, skip the assert or lie about equality. `record_asserts` rewrites each
assert that calls the function under test into `_rapid_rec(k, args, expected, param)`, keeping the
surrounding code (loops, helper variables) as it is. The rewritten test runs only in the reference
jail, next to the gold solution, where it records the argument tuples and expected values as plain
data; `rules[k]` says how the k-th assert compares. A form not listed below raises `Unconvertible`,
and the problem is left out rather than scored the old way.

Converted forms (C is a call of the function under test with positional arguments only):
  C == E, E == C, W(C) == E for W in set/sorted/list/tuple/frozenset   -> "eq" (W applied outside)
  C is True / False / None                                            -> "is"
  abs(C - E) < T, abs(E - C) < T                                      -> "abs_lt" with T
  math.isclose(C, E, rel_tol=..., abs_tol=...)                        -> "isclose" with the tolerances
  C, not C                                                            -> "eq" on bool(C) against True/False
  True (a constant assert)                                            -> dropped
  V = C followed by assert P(V), P not calling the function           -> "holds": P is evaluated on the
      reported value in a separate jail run that holds only dataset code (rewards/verdict.py), with the
      local variables P reads recorded as plain data and the function's imports repeated
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

RECORD = "_rapid_rec"
WRAPS = ("set", "sorted", "list", "tuple", "frozenset")


class Unconvertible(Exception):
    """A test that cannot be turned into (inputs, expected, rule) form; the message says why."""


@dataclass(frozen=True)
class Rule:
    """How one recorded check is judged. `observe` runs in the jail on the return value ("value": as
    is, "truth": bool(value), "not_none": value if it is a bool else value is not None); `compare`,
    `wrap` and the recorded param are applied outside (rewards/verdict.py)."""

    compare: str  # eq | is | abs_lt | isclose | mbpp | holds
    observe: str = "value"
    wrap: str | None = None
    predicate: str | None = None  # holds: an expression over `var` and the recorded locals
    var: str | None = None
    setup: str = ""  # holds: the imports the predicate needs
    oracle: str | None = None  # mbpp: EvalPlus's special oracle for this entry point (verdict.ORACLES)

    @property
    def exact(self) -> bool:
        """Equal values pass (for mbpp: at least): a large value may be reported by its digest."""
        return (self.compare in ("eq", "mbpp") and self.wrap is None and self.observe == "value"
                and self.oracle is None)


def _is_call(node: ast.AST, name: str) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name
            and not node.keywords)


def uses(node: ast.AST | None, name: str) -> bool:
    return node is not None and any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(node))


def _match(test: ast.expr, name: str):
    """(rule, call, expected expr, param expr) for one assert's condition, None for `assert True`."""
    if isinstance(test, ast.Constant) and test.value is True:
        return None
    if _is_call(test, name):
        return Rule("eq", "truth"), test, ast.Constant(True), None
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and _is_call(test.operand, name):
        return Rule("eq", "truth"), test.operand, ast.Constant(False), None
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        left, op, right = test.left, test.ops[0], test.comparators[0]
        if isinstance(op, ast.Eq):
            for obs, exp in ((left, right), (right, left)):
                if _is_call(obs, name):
                    return Rule("eq"), obs, exp, None
                if (isinstance(obs, ast.Call) and isinstance(obs.func, ast.Name) and obs.func.id in WRAPS
                        and len(obs.args) == 1 and not obs.keywords and _is_call(obs.args[0], name)):
                    return Rule("eq", wrap=obs.func.id), obs.args[0], exp, None
        if isinstance(op, ast.Is) and _is_call(left, name) and isinstance(right, ast.Constant) \
                and right.value in (True, False, None) and type(right.value) in (bool, type(None)):
            return Rule("is"), left, right, None
        if (isinstance(op, ast.Lt) and isinstance(left, ast.Call) and isinstance(left.func, ast.Name)
                and left.func.id == "abs" and len(left.args) == 1 and isinstance(left.args[0], ast.BinOp)
                and isinstance(left.args[0].op, ast.Sub)):
            a, b = left.args[0].left, left.args[0].right
            for obs, exp in ((a, b), (b, a)):
                if _is_call(obs, name):
                    return Rule("abs_lt"), obs, exp, right
    if (isinstance(test, ast.Call) and isinstance(test.func, ast.Attribute) and test.func.attr == "isclose"
            and isinstance(test.func.value, ast.Name) and test.func.value.id == "math" and len(test.args) == 2
            and _is_call(test.args[0], name) and all(k.arg in ("rel_tol", "abs_tol") for k in test.keywords)):
        param = ast.Dict([ast.Constant(k.arg) for k in test.keywords], [k.value for k in test.keywords])
        return Rule("isclose"), test.args[0], test.args[1], param
    raise Unconvertible(f"assert form not supported: {ast.unparse(test)[:120]}")


class _Rewriter(ast.NodeTransformer):
    def __init__(self, name: str):
        self.name, self.rules = name, []

    def _record(self, rule: Rule, args: list[ast.expr], expected: ast.expr, param: ast.expr | None) -> ast.Expr:
        self.rules.append(rule)
        return ast.Expr(ast.Call(ast.Name(RECORD, ast.Load()),
                                 [ast.Constant(len(self.rules) - 1), ast.Tuple(args, ast.Load()), expected,
                                  param or ast.Constant(None)], []))

    def visit_FunctionDef(self, node: ast.FunctionDef):
        """Pairs `V = C` with the assert right after it that checks a property of V (before the
        generic rewrite, which would otherwise find C outside an assert)."""
        assigned = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        imports = [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
        imported = {(a.asname or a.name).split(".")[0] for n in imports for a in n.names}
        for holder in ast.walk(node):
            for field in ("body", "orelse"):
                stmts = getattr(holder, field, None)
                if isinstance(stmts, list):
                    setattr(holder, field, self._pair(stmts, assigned - imported, ast.unparse(ast.Module(imports, []))))
        self.generic_visit(node)
        return node

    def _pair(self, stmts: list[ast.stmt], local_names: set[str], setup: str) -> list[ast.stmt]:
        out, i = [], 0
        while i < len(stmts):
            a, b = stmts[i], stmts[i + 1] if i + 1 < len(stmts) else None
            if (isinstance(a, ast.Assign) and len(a.targets) == 1 and isinstance(a.targets[0], ast.Name)
                    and _is_call(a.value, self.name) and isinstance(b, ast.Assert) and uses(b.test, a.targets[0].id)
                    and not uses(b.test, self.name) and not any(uses(x, self.name) for x in a.value.args)):
                var = a.targets[0].id
                reads = sorted({n.id for n in ast.walk(b.test) if isinstance(n, ast.Name)} & local_names - {var})
                env = ast.Dict([ast.Constant(n) for n in reads], [ast.Name(n, ast.Load()) for n in reads])
                out.append(self._record(Rule("holds", predicate=ast.unparse(b.test), var=var, setup=setup),
                                        a.value.args, env, None))
                i += 2
                continue
            out.append(a)
            i += 1
        return out

    def visit_Assert(self, node: ast.Assert):
        found = _match(node.test, self.name)
        if found is None:
            return ast.Pass()
        rule, call, expected, param = found
        if any(uses(x, self.name) for x in (*call.args, expected, param)):
            raise Unconvertible(f"the expected value or arguments call the function: {ast.unparse(node.test)[:120]}")
        return self._record(rule, call.args, expected, param)


def record_asserts(tree: ast.AST, name: str, first_rule: int = 0) -> tuple[str, list[Rule]]:
    """`tree` with every assert that calls `name` turned into a recording call; the rules, numbered
    from `first_rule`. The function must not be used outside those asserts (its result assigned and
    checked later, say): that is Unconvertible, since the check would need the result in the jail."""
    rewriter = _Rewriter(name)
    rewriter.rules = [None] * first_rule
    new = ast.fix_missing_locations(rewriter.visit(tree))
    body = new.body if isinstance(new, ast.Module) else [new]
    for node in body:
        if isinstance(node, ast.FunctionDef):  # its parameter may carry the name (check(candidate))
            if uses(ast.Module(node.body, []), name):
                raise Unconvertible(f"{name!r} is used outside a supported assert")
        elif uses(node, name):
            raise Unconvertible(f"{name!r} is used outside a supported assert")
    return ast.unparse(new), rewriter.rules[first_rule:]
