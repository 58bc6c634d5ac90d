"""The way a user serves Grad-CAM without camserve: a per-request tf-keras-vis loop (the baseline)."""
