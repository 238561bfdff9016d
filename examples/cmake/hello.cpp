// The C++ wrapper, found through pkg-config like the C library.
#include <etcd_sd.hpp>

#include <iostream>

int main(int argc, char **argv) {
  std::cout << "etcd-sd " << etcd_sd::version() << " (C++)\n";
  if (argc < 2) return 0;
  try {
    etcd_sd::Client client({argv[1]});
    for (const std::string &value : client.get_entries(argc > 2 ? argv[2] : "/"))
      std::cout << value << "\n";
  } catch (const etcd_sd::Error &e) {
    std::cerr << "error " << e.status() << ": " << e.what() << "\n";
    return 1;
  }
  return 0;
}
