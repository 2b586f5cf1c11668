"""The console scripts, one thin module each: compose the config, call the library, print and write."""
