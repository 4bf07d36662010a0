"""SQL over the results, on the driver: ``query`` registers every results table under a stable name and
runs analysts' read-only queries through an allow-list.
"""
