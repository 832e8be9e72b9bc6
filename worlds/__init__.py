"""The generated worlds behind envs.make: one module per world (hotpotqa, alfworld, webshop; shops holds
WebShop's generated shops), each with its scripted expert and explorer. episodes: helpers they share;
scripted: the scripted actors built on them."""
