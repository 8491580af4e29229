"""Live media: the SFU-lite relay that forwards encoded probe video and voice."""
