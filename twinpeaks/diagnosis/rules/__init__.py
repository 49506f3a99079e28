"""The diagnosis rules, one per module; importing this package registers them all.

Measures (metrics per epoch): :mod:`.last_layer`, :mod:`.layer_health`, and
``step_jump`` in :mod:`.unstable`. Rules (findings), in the order they run:
:mod:`.dead`, :mod:`.saturated`, :mod:`.out_of_range`, :mod:`.vanishing`, :mod:`.unstable`,
:mod:`.separation`, :mod:`.overfitting`, :mod:`.twin_peaks`. A new rule is a
new module here that uses :func:`twinpeaks.diagnosis.registry.rule`, plus
its import line below.
"""

from . import (
           dead,
           last_layer,
           layer_health,
           out_of_range,
           overfitting,
           saturated,
           separation,
           twin_peaks,
           unstable,
           vanishing,
)

#: every rule module, registered by being imported
REGISTERED = (dead, last_layer, layer_health, out_of_range, overfitting, saturated, separation, twin_peaks, unstable,
              vanishing)

__all__ = ["REGISTERED", "dead", "last_layer", "layer_health", "out_of_range", "overfitting", "saturated", "separation",
           "twin_peaks", "unstable", "vanishing"]
