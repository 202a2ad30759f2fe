"""srnode: dicom_node."""
