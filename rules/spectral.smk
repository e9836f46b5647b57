# placeholder: the spectral stage is being written
