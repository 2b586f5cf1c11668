"""The diffusion process: noise schedules (forward, ``q_*``), the guided reverse loop (``p_*``) and its samplers."""
