"""nano2's layers: in each file a pure forward/backward pair (the math, over plain arrays)
and a small class that owns the layer's parameters as views into the flat store, keeps the
cache between forward and backward, and adds its parameter gradients into the store."""
