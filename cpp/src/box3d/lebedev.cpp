#include "lebedev.hpp"

#include <stdexcept>
#include <string>

#include "lebedev_tables.hpp"

namespace dodo {

LebedevRule lebedev_rule(int order) {
  for (int t = 0; t < lebedev_tables::kTableCount; ++t) {
    const auto& table = lebedev_tables::kTables[t];
    if (table.order != order) continue;
    LebedevRule rule;
    rule.order = order;
    rule.x.resize(table.points);
    rule.y.resize(table.points);
    rule.z.resize(table.points);
    rule.weight.resize(table.points);
    for (int q = 0; q < table.points; ++q) {
      rule.x[q] = table.rows[q][0];
      rule.y[q] = table.rows[q][1];
      rule.z[q] = table.rows[q][2];
      rule.weight[q] = table.rows[q][3];
    }
    return rule;
  }
  std::string known;
  for (int order_known : available_lebedev_orders()) known += " " + std::to_string(order_known);
  throw std::invalid_argument("lebedev_order " + std::to_string(order) + " is not available; available orders:" + known);
}

std::vector<int> available_lebedev_orders() {
  std::vector<int> orders;
  for (int t = 0; t < lebedev_tables::kTableCount; ++t) orders.push_back(lebedev_tables::kTables[t].order);
  return orders;
}

}  // namespace dodo
