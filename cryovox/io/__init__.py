"""File formats: MRC maps/stacks, STAR, cryoSPARC .cs, cryoDRGN pickles, and the canonical
particle table (:class:`cryovox.io.particles.ParticleTable`) every pipeline uses."""
