"""Test session set-up: DDS stays on loopback, in a per-run domain."""

import os

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_LOCALHOST_ONLY", "1")
# Per-run domain (0..101 avoids Linux ephemeral-port clashes); a CI job may pin it.
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
# Camera-sized frames need the large-image Fast DDS profile (see config/fastdds_large_images.xml).
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE",
                      os.path.join(os.path.dirname(__file__), "..", "config",
                                   "fastdds_large_images.xml"))
