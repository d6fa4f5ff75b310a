
refresh_ack8`ªªÑ¯Ù¹˜