"""Running a model forward in steps (core/stepwise.py): the same values as a full run, every node once, and
the model may change between steps where no step has run yet."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

from graphprune.core import stepwise
from graphprune.core.runtime import session, with_outputs

from .graphs import GraphBuilder


def chain():
    """conv -> relu -> conv -> relu -> (+ skip from the first relu) -> conv, with a Shape -> Reshape (a
    tensor whose axis 0 is not the batch) and a Constant node on the way."""
    g = GraphBuilder(seed=3)
    x = g.input("x", ["N", 3, 6, 6])
    a = g.op("Relu", [g.conv(x, 3, 4, name="c1")], name="r1")
    b = g.op("Relu", [g.conv(a, 4, 4, name="c2")], name="r2")
    s = g.op("Add", [a, b], name="skip")
    shape = g.op("Shape", [s], name="shape")
    n = g.op("Gather", [shape, g.ints(0)], name="n")  # a scalar kept between steps
    shape = g.op("Concat", [g.op("Unsqueeze", [n, g.ints([0])], name="n1"), g.ints([-1, 6, 6])], name="shape2", axis=0)
    flat = g.op("Reshape", [s, shape], name="same")
    scale = g.op("Constant", [], name="k", value=numpy_helper.from_array(np.array(0.5, np.float32)))
    y = g.conv(g.op("Mul", [flat, scale], name="half"), 4, 2, name="c3")
    g.output(y)
    return g.model()


def full(model, tensors, feeds):
    sess = session(with_outputs(model, tensors))
    return [dict(zip(tensors, sess.run(tensors, f))) for f in feeds]


def batches(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((k, 3, 6, 6)).astype(np.float32)} for k in (4, 4, 2)[:n]]


@pytest.mark.parametrize("budget", [None, 0])  # 0: every kept tensor goes to a memory-mapped file
def test_steps_give_the_full_runs_values_and_run_each_node_once(budget):
    m = chain()
    feeds = batches()
    run = stepwise.Stepwise(feeds, budget=budget)
    want = [["r1_out"], ["c2_out", "skip_out", "n_out"], ["half_out"], ["c3_out"]]
    for i, w in enumerate(want):
        later = [t for ws in want[i + 1:] for t in ws]
        got = run.step(m, w, later)
        ref = full(m, w, feeds)
        for t in w:
            assert len(got[t]) == len(feeds)
            for b in range(len(feeds)):
                np.testing.assert_allclose(got[t][b], ref[b][t], rtol=1e-6, atol=1e-6)
    assert run.nodes_run == len(m.graph.node)  # every node once (the Constant too: one step reads it)
    assert run.sessions == len(want)
    assert set(run.store.values) == set()  # nothing is wanted later: nothing stays
    run.close()


def test_only_what_later_steps_read_stays_stored():
    m = chain()
    run = stepwise.Stepwise(batches())
    run.step(m, ["r1_out"], ["c3_out"])
    assert set(run.store.values) == {"r1_out"}  # the input x is no longer needed
    run.step(m, ["r2_out"], ["c3_out"])
    assert set(run.store.values) == {"r1_out", "r2_out"}  # both feed the skip Add
    run.step(m, ["skip_out"], ["c3_out"])
    assert set(run.store.values) == {"skip_out"}
    run.step(m, ["n_out"], ["c3_out"])  # a scalar, kept as one (not as shape [1]) for the next step
    assert {a.shape for a in run.store.values["n_out"]} == {()}
    got = run.step(m, ["c3_out"])["c3_out"]
    ref = full(m, ["c3_out"], batches())
    for b in range(3):
        np.testing.assert_allclose(got[b], ref[b]["c3_out"], rtol=1e-6, atol=1e-6)


def test_a_weight_changed_between_steps_is_used_downstream():
    m = chain()
    feeds = batches()
    run = stepwise.Stepwise(feeds)
    run.step(m, ["r1_out"], ["c3_out"])
    w = next(t for t in m.graph.initializer if t.name == "c2.W")
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * -2.0, "c2.W"))  # c2 has not run yet
    got = run.step(m, ["c3_out"])
    ref = full(m, ["c3_out"], feeds)
    for b in range(len(feeds)):
        np.testing.assert_allclose(got["c3_out"][b], ref[b]["c3_out"], rtol=1e-6, atol=1e-6)


def test_a_tensor_no_step_kept_is_an_error_not_a_silent_zero():
    m = chain()
    run = stepwise.Stepwise(batches())
    run.step(m, ["r2_out"], [])  # nothing later: x and r1 are dropped
    with pytest.raises(KeyError, match="graph input 'x' was not kept"):
        run.step(m, ["skip_out"])
