// Generated Lebedev tables (see tools/generate_lebedev.py).
#pragma once

namespace dodo::lebedev_tables {

struct Table {
  int order;
  int points;
  const double (*rows)[4];  // x, y, z, weight (weights sum to 4 pi)
};

extern const Table kTables[];
extern const int kTableCount;

}  // namespace dodo::lebedev_tables
