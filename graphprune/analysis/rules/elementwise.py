"""Elementwise ops: unary activations tie every axis to itself; n-ary ops tie with numpy broadcasting
(a per-channel constant is sliced with the channels, a scalar or size-1 axis ties nothing)."""

from __future__ import annotations

from ..reasons import BY_DESIGN
from ..registry import register

UNARY = (
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu", "Gelu", "Erf",
    "Mish", "Softplus", "Softsign", "Exp", "Log", "Sqrt", "Reciprocal", "Abs", "Neg", "Floor", "Ceil", "Round",
    "Sign", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Not",
    "IsNaN", "IsInf", "ThresholdedRelu", "Shrink", "Swish", "Identity", "Cast", "Dropout", "BitwiseNot",
)

BROADCAST = (
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Less", "Greater",
    "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod", "BitShift", "PRelu", "Clip", "BitwiseAnd",
    "BitwiseOr", "BitwiseXor",
)


@register("elementwise", *UNARY)
def unary(ctx):
    """Unary activation / Identity / Cast / Dropout: every axis passes through unchanged."""
    x = ctx.input(0)
    for y in ctx.outputs:
        if y:
            ctx.elementwise([x], y)
    for extra in ctx.inputs[1:]:  # Dropout ratio/training_mode: scalars
        if extra:
            ctx.fix_tensor(extra)


@register("elementwise", *BROADCAST)
def broadcast(ctx):
    """Broadcasting n-ary op (Add/Mul/Where/Clip/PRelu...): axes aligned from the right are tied."""
    ctx.elementwise([t for t in ctx.inputs if t], ctx.output(0))


@register("elementwise", "CastLike")
def cast_like(ctx):
    """CastLike: the second input only supplies a dtype."""
    ctx.elementwise([ctx.input(0)], ctx.output(0))
    for ax in ctx.axes(ctx.input(1)):
        ctx.free(ctx.input(1), ax)


def _axis_op(ctx, axis, what):
    x = ctx.input(0)
    r = ctx.rank(x)
    if r is None:
        ctx.freeze_node(f"{ctx.op} '{ctx.name}': input shape unknown")
        return
    axis %= r
    for ax in range(r):
        if ax == axis:
            ctx.fix(x, ax, f"{ctx.op} '{ctx.name}' {what} axis {ax}", BY_DESIGN)
            for yy in ctx.outputs:
                if yy and ctx.rank(yy) == r:
                    ctx.fix(yy, ax)
        else:
            for yy in ctx.outputs:
                if yy and ctx.rank(yy) == r:
                    ctx.tie(x, ax, yy, ax)


@register("elementwise", "Softmax", "LogSoftmax", "Hardmax")
def softmax(ctx):
    """Softmax family: the softmax axis mixes values; other axes pass through."""
    r = ctx.rank(ctx.input(0))
    axis = ctx.attr("axis", -1 if ctx.view.opset() >= 13 else 1)
    if r is not None and ctx.view.opset() < 13:
        # Before opset 13 the input is coerced to 2-D at `axis`: every axis from there on is mixed.
        x, y = ctx.input(0), ctx.output(0)
        axis %= r
        for ax in range(r):
            if ax < axis:
                ctx.tie(x, ax, y, ax)
            else:
                ctx.fix(x, ax, f"{ctx.op} '{ctx.name}' normalises over axis {ax}", BY_DESIGN)
                ctx.fix(y, ax)
        return
    _axis_op(ctx, axis, "normalises over")


@register("elementwise", "CumSum")
def cumsum(ctx):
    """CumSum: accumulates along its axis."""
    axis = ctx.const(ctx.input(1))
    if axis is None:
        ctx.freeze_node(f"CumSum '{ctx.name}': axis is not a constant")
        return
    ctx.fix_tensor(ctx.input(1))
    _axis_op(ctx, int(axis), "accumulates along")


@register("elementwise", "QuantizeLinear", "DequantizeLinear")
def quant(ctx):
    """(De)QuantizeLinear: elementwise; per-axis scales and zero points follow the quantised axis."""
    x, y = ctx.input(0), ctx.output(0)
    ctx.elementwise([x], y)
    r = ctx.rank(x)
    axis = ctx.attr("axis", 1)
    for p in ctx.inputs[1:3]:
        if not p:
            continue
        rp = ctx.rank(p)
        if rp == 1 and r:
            ctx.tie(p, 0, y, axis % r)
        elif rp:
            ctx.elementwise([p], y)
