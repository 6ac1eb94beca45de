"""Networks and the pure math of matching: backbones, MoCo, cycle loss, OT, Hough matching."""
