/* kmdc_tlv.c - placeholder until written. */
