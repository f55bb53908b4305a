"""The rclpy shell around the ROS-free core: node, lifecycle, QoS table, process helpers."""
