"""The networks and their training: the conditioned U-Net, the LightningModule, learning-rate schedules."""
