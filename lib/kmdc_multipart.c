/* kmdc_multipart.c - placeholder until written. */
