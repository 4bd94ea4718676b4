"""nano2's layers: in each file a pure forward/backward pair (the math, over plain arrays)
and a small class that owns the layer's parameters as views into the flat store, keeps the
cache between forward and backward, and adds its parameter gradients into the store.

Each class says what tools need to know about it, so no tool parses layer names: `name`
(its parameters' prefix), `parameter_names` (the parameters its backward writes), `children`
(a composite's layers, in forward order) and `kind` (its row in the timing commands'
--profile; a composite that computes nothing of its own has none)."""
