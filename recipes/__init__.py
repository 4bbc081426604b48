"""The recipe presets: a folder per recipe, with a YAML file per preset and a README (shipped as ncl_ext.presets)."""
