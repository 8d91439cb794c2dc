"""Op rules by family; importing this package registers them all in the rule table."""

from . import contrib, conv, elementwise, linear, norm, pool, quant, recurrent, shape  # noqa: F401
