"""CryoFM-style flow-matching prior for density maps.

- :mod:`.hdit`: the 3D hourglass diffusion transformer (:class:`HDiT3D`, presets up to CryoFM-S/L);
- :mod:`.flow`: rectified-flow objective, EMA, density normalisation, :class:`FlowPrior`;
- :mod:`.sampling`: Euler sampler with flow posterior guidance (CryoFM Alg. 1 and 2).
"""

from cryovox.models.flow.flow import (PRIOR_KIND, EMA, DensityNorm, FlowPrior, MapScale, build_velocity_model,
                                      flow_loss, sample_flow_time)
from cryovox.models.flow.hdit import HDiT3D, HDiTConfig, hdit_config
from cryovox.models.flow.sampling import flow_sample, guidance_weight, time_grid

__all__ = ["PRIOR_KIND", "EMA", "DensityNorm", "FlowPrior", "MapScale", "build_velocity_model", "flow_loss",
           "sample_flow_time", "HDiT3D", "HDiTConfig", "hdit_config", "flow_sample", "guidance_weight", "time_grid"]
