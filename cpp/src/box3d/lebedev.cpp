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

PairedRule paired_rule(const LebedevRule& rule, std::size_t lanes) {
  const std::size_t points = rule.size();
  std::vector<bool> taken(points, false);
  std::vector<std::size_t> first;  // one point of each antipodal pair
  for (std::size_t q = 0; q < points; ++q) {
    if (taken[q]) continue;
    std::size_t antipode = points;
    for (std::size_t p = q + 1; p < points && antipode == points; ++p)
      if (!taken[p] && rule.x[p] == -rule.x[q] && rule.y[p] == -rule.y[q] && rule.z[p] == -rule.z[q] &&
          rule.weight[p] == rule.weight[q])
        antipode = p;
    if (antipode == points)
      throw std::invalid_argument("Lebedev rule of order " + std::to_string(rule.order) + ": point " +
                                  std::to_string(q) + " has no antipode of equal weight");
    taken[q] = taken[antipode] = true;
    first.push_back(q);
  }
  if (lanes < 1) lanes = 1;
  PairedRule paired;
  paired.half = (first.size() + lanes - 1) / lanes * lanes;
  const std::size_t size = 2 * paired.half;
  paired.x.assign(size, 0.0);
  paired.y.assign(size, 0.0);
  paired.z.assign(size, 0.0);
  paired.weight.assign(size, 0.0);
  for (std::size_t i = 0; i < first.size(); ++i) {
    const std::size_t q = first[i];
    paired.x[i] = rule.x[q];
    paired.y[i] = rule.y[q];
    paired.z[i] = rule.z[q];
    paired.x[i + paired.half] = -rule.x[q];
    paired.y[i + paired.half] = -rule.y[q];
    paired.z[i + paired.half] = -rule.z[q];
    paired.weight[i] = paired.weight[i + paired.half] = rule.weight[q];
  }
  paired.weighted_x.assign(paired.half, 0.0);
  paired.weighted_y.assign(paired.half, 0.0);
  paired.weighted_z.assign(paired.half, 0.0);
  for (std::size_t i = 0; i < paired.half; ++i) {
    paired.weighted_x[i] = paired.weight[i] * paired.x[i];
    paired.weighted_y[i] = paired.weight[i] * paired.y[i];
    paired.weighted_z[i] = paired.weight[i] * paired.z[i];
  }
  return paired;
}

std::vector<int> available_lebedev_orders() {
  std::vector<int> orders;
  for (int t = 0; t < lebedev_tables::kTableCount; ++t) orders.push_back(lebedev_tables::kTables[t].order);
  return orders;
}

}  // namespace dodo
