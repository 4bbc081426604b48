"""The recipe presets: one folder per recipe with a YAML file per preset and a README (shipped as ``ncl_ext.presets``)."""
