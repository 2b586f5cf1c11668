"""The data: registry sources and their verification, the LightningDataModule, labels and style attributes."""
